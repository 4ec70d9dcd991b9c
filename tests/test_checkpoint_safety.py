import io
import pickle
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

import nommer_mm  # noqa: F401  (registers the allow-list)


def _train_and_save(work_dir):
    """A real mmengine run (2 epochs, val, LR schedulers) writing a
    checkpoint with message hub, optimizer and scheduler states."""
    from mmengine.evaluator import BaseMetric
    from mmengine.model import BaseModel
    from mmengine.runner import Runner

    class Model(BaseModel):

        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(2, 1)

        def forward(self, inputs, data_samples=None, mode='tensor'):
            x = torch.stack(inputs)
            if mode == 'loss':
                return dict(loss=self.fc(x).square().mean())
            return [self.fc(x)]

    class Data(torch.utils.data.Dataset):
        metainfo = dict(classes=('a', 'b'))

        def __len__(self):
            return 4

        def __getitem__(self, i):
            return dict(inputs=torch.full((2, ), float(i)))

    class Metric(BaseMetric):

        def process(self, data_batch, data_samples):
            self.results.append(1.0)

        def compute_metrics(self, results):
            return dict(acc=float(len(results)))

    loader = dict(dataset=Data(), batch_size=2,
                  sampler=dict(type='DefaultSampler', shuffle=False))
    runner = Runner(
        model=Model(), work_dir=str(work_dir), train_dataloader=loader,
        val_dataloader=loader, val_cfg=dict(), val_evaluator=dict(type=Metric),
        train_cfg=dict(by_epoch=True, max_epochs=2, val_interval=1),
        optim_wrapper=dict(optimizer=dict(type='AdamW', lr=0.01)),
        param_scheduler=[dict(type='LinearLR', start_factor=0.1, end=1),
                         dict(type='CosineAnnealingLR', begin=1, end=2)],
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=1,
                                           save_best='acc')),
        randomness=dict(seed=0))
    runner.train()
    return work_dir / 'epoch_2.pth'


def test_mmengine_checkpoint_loads_with_weights_only(tmp_path):
    path = _train_and_save(tmp_path)
    # without the plugin, torch's default load refuses the checkpoint ...
    plain = subprocess.run(
        [sys.executable, '-c', f'import torch; torch.load({str(path)!r})'],
        capture_output=True, text=True)
    assert plain.returncode != 0 and 'weights_only' in plain.stderr
    # ... with it, the same default (weights_only=True) load succeeds
    ckpt = torch.load(path)
    assert ckpt['meta']['epoch'] == 2
    from mmengine.logging import HistoryBuffer
    lr = ckpt['message_hub']['log_scalars']['train/lr']
    assert isinstance(lr, HistoryBuffer) and lr.current() > 0
    # exactly as mmengine loads it when resuming
    from mmengine.runner.checkpoint import _load_checkpoint
    assert _load_checkpoint(str(path), map_location='cpu')['meta']['epoch'] == 2


class _Sneaky:
    """Pickles to getattr(<HistoryBuffer>, '__init__'), which must be
    refused: only the statistics methods are allowed."""

    def __reduce__(self):
        from mmengine.logging import HistoryBuffer
        return (getattr, (HistoryBuffer, '__init__'))


def test_other_getattr_uses_are_refused():
    buf = io.BytesIO()
    torch.save({'x': _Sneaky()}, buf)
    buf.seek(0)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(buf)
