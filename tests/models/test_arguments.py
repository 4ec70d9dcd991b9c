"""Bad arguments fail at construction with the argument, the value and
what is allowed; odd inputs (an empty batch, CPU bf16 autocast) work."""

import pytest
import torch

from nommer_mm import CoTNet, GCViT, NomMer, Visformer
from small_archs import SMALL

COMMON = [
    ('frozen_stages', 7, r'frozen_stages=7; expected an int in \[-1, 3\]'),
    (
        'drop_path_rate',
        1.5,
        r'drop_path_rate=1\.5; expected a number in '
        r'\[0, 1\)',
    ),
    ('drop_path_rate', -0.1, r'drop_path_rate=-0\.1'),
    ('in_channels', 0, r'in_channels=0; expected an int >= 1'),
]
OWN = {
    NomMer: [
        ('window_size', 0, r'window_size=0; expected an int >= 1'),
        ('img_size', 0, r'img_size=0; expected a positive int'),
        ('img_size', (224,), r'img_size=\(224,\)'),
        ('img_size', 8, r'img_size=\(8, 8\).*must be >= 16'),
        ('dct_blocks', (0, 4), r'dct_blocks=\(0, 4\); expected 2 ints'),
        ('dct_blocks', (8,), r'dct_blocks=\(8,\)'),
        ('dct_blocks', (-8, 4), r'dct_blocks=\(-8, 4\)'),
        ('norm_cfg', dict(type='Foo'), r"norm_cfg=\{'type': 'Foo'\}"),
    ],
    GCViT: [
        ('window_size', (0, 7, 14, 7), r'window_size=\(0, 7, 14, 7\)'),
        ('global_query_pools', (3, 2), r'global_query_pools'),
    ],
    Visformer: [
        ('img_size', 0, r'img_size=0'),
        ('spatial_groups', 0, r'spatial_groups=0'),
        ('norm_cfg', dict(type='Foo'), r"norm_cfg=\{'type': 'Foo'\}"),
    ],
    CoTNet: [('norm_cfg', dict(type='Foo'), r"norm_cfg=\{'type': 'Foo'\}")],
}
CASES = [(cls, *case) for cls in SMALL for case in COMMON + OWN[cls]]


@pytest.mark.parametrize(
    'cls,name,value,message',
    CASES,
    ids=[f'{c[0].__name__}-{c[1]}={c[2]}' for c in CASES],
)
def test_bad_argument_fails_at_construction(cls, name, value, message):
    with pytest.raises(ValueError, match=f'{cls.__name__}: {message}'):
        cls(**SMALL[cls], **{name: value})


@pytest.mark.parametrize('cls', list(SMALL), ids=lambda c: c.__name__)
def test_arch_dict_keys_and_values_are_checked(cls):
    arch = dict(SMALL[cls]['arch'])
    first = next(
        iter(
            k
            for k in arch
            if isinstance(arch[k], int) and not isinstance(arch[k], bool)
        )
    )
    with pytest.raises(
        ValueError,
        match=rf"arch\['{first}'\]=0; expected "
        'an int >= 1',
    ):
        cls(arch=dict(arch, **{first: 0}))
    with pytest.raises(ValueError, match=r"unknown keys \['num_head'\]"):
        cls(arch=dict(arch, num_head=3))  # a typo is not dropped silently
    cls(**SMALL[cls])  # the valid arch builds


@pytest.mark.parametrize('cls', list(SMALL), ids=lambda c: c.__name__)
@pytest.mark.parametrize('training', [False, True])
def test_empty_batch(cls, training):
    """Batch 0: empty outputs of the shapes batch 2 has, and no BatchNorm
    statistic moves."""
    model = cls(**SMALL[cls]).train(training)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    empty = model(torch.zeros(0, 3, 64, 48))
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert model.training == training
    full = model.eval()(torch.zeros(2, 3, 64, 48))
    assert [tuple(o.shape) for o in empty] == [(0, *o.shape[1:]) for o in full]


def test_visformer_patch_embedding_runs_fp32_under_cpu_bf16_autocast():
    """Work-around for a oneDNN bf16 convolution seen 120% off fp32 on some
    CPUs (Visformer under CPU bf16 autocast 120% off its fp32 output).
    Minimal reproduction, on such a CPU:

        conv = torch.nn.Conv2d(16, 96, 4, stride=4)
        x = torch.randn(2, 16, 112, 112)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            y = conv(x)
        (y.float() - conv(x)).norm() / conv(x).norm()  # ~1.2 there

    Our patch embeddings therefore run that convolution in fp32 under CPU
    autocast: its output equals the fp32 one exactly."""
    torch.manual_seed(0)
    model = Visformer(arch='tiny').eval()
    x = torch.randn(2, 3, 160, 160)
    with torch.no_grad():
        stem = model.stem(x)
        ref = model.patch_embed1(stem)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            got = model.patch_embed1(stem)
    assert got.dtype == torch.float32 and torch.equal(got, ref)
    # The whole model: bf16 rounding only. BatchNorm statistics are first
    # estimated on a few batches, as a trained model's are: with the
    # initial ones (mean 0, var 1) nothing is normalised, attention logits
    # grow large and bf16 rounding alone moves the last stage by ~10%.
    # Calibrated, every stage stays within ~1.5% of fp32.
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.reset_running_stats()
                m.momentum = None  # cumulative average
        model.train()
        for _ in range(2):
            model(torch.randn(4, 3, 160, 160))
        model.eval()
        with torch.autocast('cpu', dtype=torch.bfloat16):
            out = model(x)
        fp32 = model(x)
    errors = [((o.float() - r).norm() / r.norm()).item() for o, r in zip(out, fp32)]
    assert max(errors) > 1e-4, 'autocast left the model in fp32'
    assert max(errors) < 0.03, f'bf16 outputs off fp32 by {errors} (relative)'


def test_training_stops_at_the_first_non_finite_loss(tmp_path):
    """A NaN in the 5th sample (iteration 3 at batch 2): a real mmengine
    run with the hook tools/train.py adds stops there, naming it."""
    import uuid

    import torch.nn as nn
    from mmengine.model import BaseModel
    from mmengine.runner import Runner

    import nommer_mm  # noqa: F401  (registers FiniteLossHook)

    class Model(BaseModel):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(2, 1)

        def forward(self, inputs, data_samples=None, mode='tensor'):
            return dict(loss=self.fc(torch.stack(inputs)).square().mean())

    class Data(torch.utils.data.Dataset):
        def __len__(self):
            return 8

        def __getitem__(self, i):
            return dict(inputs=torch.full((2,), float('nan') if i == 4 else float(i)))

    runner = Runner(
        model=Model(),
        work_dir=str(tmp_path),
        train_dataloader=dict(
            dataset=Data(),
            batch_size=2,
            sampler=dict(type='DefaultSampler', shuffle=False),
        ),
        train_cfg=dict(by_epoch=False, max_iters=4),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.01)),
        custom_hooks=[dict(type='FiniteLossHook')],
        default_hooks=dict(checkpoint=None),
        experiment_name=f'nan-{uuid.uuid4().hex}',
    )
    with pytest.raises(FloatingPointError, match='loss is nan at iteration 3'):
        runner.train()
