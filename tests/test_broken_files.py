"""Files that go wrong in real life (a download cut short, an empty file
after a full disk, the wrong model's checkpoint, a broken image), through
every loader that reads them: each is named with what is wrong, in one
line, and none of torch's, OpenCV's or pickle's own messages reaches the
user; weights that do not fit stop a run before it trains."""

from __future__ import annotations

import gzip
import json
import subprocess
import uuid
import io
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from cls_helpers import load_tool, run_tool

from nommer_mm import NomMer
from nommer_mm.checkpoint_safety import (
    CheckpointFileError,
    MissingCheckpointError,
    WeightsDoNotFitError,
    check_checkpoint_file,
    load_checkpoint_file,
    mmengine_loads_through_plugin,
)

ROOT = Path(__file__).resolve().parents[1]
# What users saw before: none of it may reach them.
OLD_WORDS = (
    'mmap',
    'WeightsUnpickler',
    'Please file an issue',
    'EOFError',
    'PytorchStreamReader',
    'cv2.error',
    'Traceback',
)
ARCH = dict(
    embed_dims=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2], bottleneck_ratios=[2, 2]
)


def _clean(text: str) -> None:
    for word in OLD_WORDS:
        assert word not in text, f'{word!r} reached the user:\n{text}'


# ------------------------------------------------------------ checkpoints
@pytest.fixture(scope='module')
def good(tmp_path_factory) -> Path:
    """A classifier checkpoint of a small NomMer, as a training run holds
    it (weights and a training state), in torch's zip format."""
    torch.manual_seed(0)
    model = NomMer(arch=ARCH, out_type='cls_token', out_indices=(3,))
    state = {'backbone.' + k: v for k, v in model.state_dict().items()}
    path = tmp_path_factory.mktemp('good') / 'epoch_1.pth'
    torch.save(
        dict(
            state_dict=state,
            meta=dict(epoch=1, iter=4),
            message_hub=dict(runtime_info=dict(epoch=1)),
        ),
        path,
    )
    return path


def _broken(kind: str, good: Path, folder: Path) -> tuple[Path, str]:
    """A broken copy of ``good`` and the words its one-line error must say."""
    path = folder / f'{kind}.pth'
    data = good.read_bytes()
    if kind == 'empty':
        path.write_bytes(b'')
        return path, f'{path} is empty (0 bytes)'
    if kind == 'cut':
        path.write_bytes(data[: len(data) // 2])
        return path, f'{path} is cut short: {len(data) // 2} of {len(data)} bytes'
    if kind == 'random':
        noise = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)
        path.write_bytes(b'\x00' + noise.tobytes())
        return path, f'{path} is not a PyTorch checkpoint'
    assert kind == 'missing'
    return path, f'{path} does not exist'


KINDS = ['empty', 'cut', 'random', 'missing']


def _converter(module: str, *args: str):
    def load(path: Path, out: Path) -> None:
        tool = load_tool(f'tools/model_converters/{module}.py')
        tool.main([*args, str(path), str(out / 'converted.pth')])

    return load


def _resume(path: Path, work: Path) -> None:
    from mmengine.config import Config

    from nommer_mm.launch import resolve_resume

    resolve_resume(Config(dict(work_dir=str(work))), str(path))


def _pretrained(path: Path, work: Path) -> None:
    init = dict(type='Pretrained', checkpoint=str(path), prefix='backbone.')
    NomMer(arch=ARCH, init_cfg=init).init_weights()


def _pretrained_arg(path: Path, work: Path) -> None:
    NomMer(arch=ARCH, pretrained=str(path)).init_weights()


def _load_from(path: Path, work: Path) -> None:
    from mmengine.runner.checkpoint import _load_checkpoint

    with mmengine_loads_through_plugin():  # resume, load_from, pictures
        _load_checkpoint(str(path))


def _test_tool(path: Path, work: Path) -> None:
    from nommer_mm.launch import check_weights_fit

    check_weights_fit(nn.Linear(1, 1), str(path))


LOADERS = {
    'load_checkpoint_file': lambda p, w: load_checkpoint_file(p, mmap=True),
    'nommer2mm': _converter('nommer2mm'),
    'peer2mm': _converter('peer2mm', 'gcvit'),
    'train.py --resume CKPT': _resume,
    'init_cfg=Pretrained': _pretrained,
    'pretrained=': _pretrained_arg,
    'load_from / resume / picture tools (mmengine loader)': _load_from,
    'test.py': _test_tool,
}


@pytest.mark.parametrize('kind', KINDS)
@pytest.mark.parametrize('loader', sorted(LOADERS))
def test_a_broken_checkpoint_is_named_in_one_line(loader, kind, good, tmp_path):
    path, words = _broken(kind, good, tmp_path)
    with pytest.raises((CheckpointFileError, SystemExit)) as err:
        LOADERS[loader](path, tmp_path)
    said = str(err.value)
    if loader in ('nommer2mm', 'peer2mm', 'train.py --resume CKPT'):
        assert isinstance(err.value, SystemExit)  # the program ends, no traceback
    if loader == 'train.py --resume CKPT':  # "--resume X: cannot resume from it: "
        words = 'it ' + words[len(f'{path} ') :]
        assert said.startswith(f'--resume {path}: cannot resume from it: '), said
    assert words in said, said
    _clean(said)
    if kind == 'missing':
        assert isinstance(err.value, (MissingCheckpointError, SystemExit))
    first_line = said.splitlines()[0]
    assert words in first_line and len(said.splitlines()) == 1, said
    assert not (tmp_path / 'converted.pth').exists()


def test_cut_short_counts_bytes_of_the_complete_file(good, tmp_path):
    """The size named is that of the complete file, for cuts anywhere past
    the list of tensors, in both formats."""
    for fmt in ('zip', 'legacy'):
        full = tmp_path / f'{fmt}.pth'
        torch.save(
            load_checkpoint_file(good),
            full,
            _use_new_zipfile_serialization=fmt == 'zip',
        )
        data = full.read_bytes()
        for cut in (len(data) // 3, len(data) // 2, len(data) - 100, len(data) - 1):
            part = tmp_path / 'part.pth'
            part.write_bytes(data[:cut])
            with pytest.raises(CheckpointFileError) as err:
                load_checkpoint_file(part)
            assert f'is cut short: {cut} of {len(data)} bytes' in str(err.value), (
                fmt,
                cut,
            )
        part.write_bytes(data[:40])  # inside the list of tensors
        with pytest.raises(CheckpointFileError, match='is cut short: 40 bytes'):
            load_checkpoint_file(part)


def test_cut_short_counts_bytes_of_a_file_older_torch_wrote(tmp_path):
    """torch 2.1 writes fewer small records before the tensor data, and the
    tensor records in the order of their keys as strings (data/10 before
    data/2); the size named is still that of the complete file."""
    data = (Path(__file__).parent / 'data' / 'saved_by_torch_2.1.pth').read_bytes()
    assert load_checkpoint_file(io.BytesIO(data))['meta'] == {'epoch': 1}
    for cut in (len(data) // 2, len(data) - 100, len(data) - 1):
        part = tmp_path / 'part.pth'
        part.write_bytes(data[:cut])
        with pytest.raises(CheckpointFileError) as err:
            load_checkpoint_file(part)
        assert f'is cut short: {cut} of {len(data)} bytes' in str(err.value), cut
    # cut before the file shows which small records it has: a lower bound
    cut = data.index(b'saved_by_torch_2.1/byteorder') - 20
    (tmp_path / 'part.pth').write_bytes(data[:cut])
    with pytest.raises(CheckpointFileError, match=f'is cut short: {cut} of at least'):
        load_checkpoint_file(tmp_path / 'part.pth')


def _safetensors(path: Path, good: Path) -> None:
    from safetensors.torch import save_file  # installed with timm

    save_file(load_checkpoint_file(good)['state_dict'], str(path))


NOT_CHECKPOINTS = {  # what is written at the path, and what it is called
    'HTML': (
        lambda path, good: path.write_text(
            '<!DOCTYPE html><html><body>404</body></html>'
        ),
        'is not a PyTorch checkpoint: it is an HTML/XML page',
    ),
    'directory': (
        lambda path, good: path.mkdir(),
        'is a directory, not a checkpoint file',
    ),
    'safetensors': (
        _safetensors,
        'is not a PyTorch checkpoint: it is a safetensors file',
    ),
    'gzip': (  # e.g. a .pth.gz saved without its suffix
        lambda path, good: path.write_bytes(gzip.compress(good.read_bytes())),
        'is not a PyTorch checkpoint: it is gzip-compressed',
    ),
    'JSON': (  # e.g. a config or log saved under the checkpoint's name
        lambda path, good: path.write_text(
            json.dumps({'model': {'type': 'NomMer'}, 'epoch': 1}, indent=4)
        ),
        'is not a PyTorch checkpoint: it is JSON text',
    ),
}


@pytest.mark.parametrize('kind', sorted(NOT_CHECKPOINTS))
def test_what_a_non_checkpoint_looks_like(kind, good, tmp_path):
    """Each kind of file the reader recognises is named, with the path, in
    one line, by the check and by the loader."""
    write, words = NOT_CHECKPOINTS[kind]
    path = tmp_path / 'epoch_1.pth'
    write(path, good)
    for read in (check_checkpoint_file, load_checkpoint_file):
        with pytest.raises(CheckpointFileError) as err:
            read(path)
        said = str(err.value)
        assert said.startswith(f'{path} {words}'), said
        assert len(said.splitlines()) == 1, said
        _clean(said)


def test_the_reader_tells_zip_from_legacy(good, tmp_path):
    legacy = tmp_path / 'legacy.pth'
    torch.save(load_checkpoint_file(good), legacy, _use_new_zipfile_serialization=False)
    assert check_checkpoint_file(good) == 'zip'
    assert check_checkpoint_file(legacy) == 'legacy'


# ------------------------------------------------- legacy (non-zip) files
def test_legacy_files_load_memory_mapped_or_not(good, tmp_path):
    legacy = tmp_path / 'epoch_2.pth'
    torch.save(load_checkpoint_file(good), legacy, _use_new_zipfile_serialization=False)
    assert legacy.read_bytes()[:2] == b'\x80\x02'  # not a zip
    a, b = load_checkpoint_file(good), load_checkpoint_file(legacy, mmap=True)
    assert a.keys() == b.keys()
    for key, value in a['state_dict'].items():
        assert torch.equal(value, b['state_dict'][key]), key


def test_auto_resume_takes_a_legacy_checkpoint(good, tmp_path, capfd):
    from mmengine.config import Config

    from nommer_mm.launch import resolve_resume

    legacy = tmp_path / 'epoch_2.pth'
    torch.save(load_checkpoint_file(good), legacy, _use_new_zipfile_serialization=False)
    (tmp_path / 'last_checkpoint').write_text(str(legacy))
    cfg = Config(dict(work_dir=str(tmp_path)))
    resolve_resume(cfg, 'auto')
    assert cfg.load_from == str(legacy)
    said = capfd.readouterr().err
    assert f'resuming from {legacy} (named by' in said
    assert 'skipped' not in said
    _clean(said)


# ------------------------------------------------------------- resume why
def test_resume_says_why_the_pointer_was_not_used(good, tmp_path, capfd):
    from mmengine.config import Config

    from nommer_mm.launch import resolve_resume

    older = tmp_path / 'epoch_1.pth'
    older.write_bytes(good.read_bytes())
    torn = tmp_path / 'epoch_2.pth'
    data = good.read_bytes()
    torn.write_bytes(data[: len(data) // 2])
    marker = tmp_path / 'last_checkpoint'
    marker.write_text(str(torn))
    cfg = Config(dict(work_dir=str(tmp_path)))
    resolve_resume(cfg, 'auto')
    assert cfg.load_from == str(older)
    said = capfd.readouterr().err
    assert (
        f'skipped {torn}: it is cut short: {len(data) // 2} of {len(data)} bytes'
        in said
    )
    assert (
        f'resuming from {older}: the newest checkpoint in {tmp_path} that loads, '
        f'in place of {torn}, which {marker} names'
    ) in said
    _clean(said)


# ------------------------------------------------ weights that do not fit
def _zoo(monkeypatch) -> dict:
    """NomMer's arch zoo replaced by two small archs named as the real
    ones, so arch detection runs in a fast test."""
    small = dict(ARCH, embed_dims=24, bottleneck_ratios=[4, 4])
    zoo = {'t': ARCH, 'tiny': ARCH, 's': small, 'small': small}
    monkeypatch.setattr(NomMer, 'arch_zoo', zoo)
    from nommer_mm.checkpoint_fit import _arch_shapes

    _arch_shapes.cache_clear()
    return zoo


def _save_backbone(tmp_path: Path, arch, name: str, prefix: str = '', drop=()) -> Path:
    torch.manual_seed(0)
    model = NomMer(arch=arch)
    state = {prefix + k: v for k, v in model.state_dict().items() if k not in drop}
    path = tmp_path / f'{name}.pth'
    torch.save({'state_dict': state}, path)
    return path


def test_weights_of_another_arch_stop_with_the_arch_named(tmp_path, monkeypatch):
    _zoo(monkeypatch)
    path = _save_backbone(tmp_path, 'small', 'nommer-s', prefix='backbone.')
    init = dict(type='Pretrained', checkpoint=str(path), prefix='backbone.')
    for build in (
        lambda: NomMer(arch='tiny', init_cfg=init),
        lambda: NomMer(arch='tiny', pretrained=str(path)),  # no prefix: hint too
    ):
        with pytest.raises(WeightsDoNotFitError) as err:
            build().init_weights()
        said = str(err.value)
        assert 'size mismatch' in said or 'missing' in said, said
        assert "these weights are NomMer arch='small'" in said, said
        assert 'allow_partial=True' in said
        _clean(said)


def test_a_classifier_checkpoint_without_prefix_gets_the_prefix_hint(
    tmp_path, monkeypatch
):
    _zoo(monkeypatch)  # no other arch fits: the prefix hint alone
    path = _save_backbone(tmp_path, ARCH, 'cls', prefix='backbone.')
    with pytest.raises(WeightsDoNotFitError) as err:
        NomMer(
            arch=ARCH, init_cfg=dict(type='Pretrained', checkpoint=str(path))
        ).init_weights()
    said = str(err.value)
    assert "its keys start with 'backbone.'" in said
    assert "add prefix='backbone.' to the Pretrained init_cfg" in said
    assert 'missing:\n  pos_embed' in said
    # with the prefix it loads, and the weights are the file's
    model = NomMer(
        arch=ARCH,
        init_cfg=dict(type='Pretrained', checkpoint=str(path), prefix='backbone.'),
    )
    model.init_weights()
    saved = load_checkpoint_file(path)['state_dict']
    assert torch.equal(model.stem.conv.weight, saved['backbone.stem.conv.weight'])


def test_a_backbone_checkpoint_lacking_keys_stops_with_the_list(tmp_path, monkeypatch):
    _zoo(monkeypatch)
    drop = ('stages.1.blocks.0.mlp.fc2.weight', 'cls_token')
    path = _save_backbone(tmp_path, ARCH, 'partial', drop=drop)
    init = dict(type='Pretrained', checkpoint=str(path))
    with pytest.raises(WeightsDoNotFitError) as err:
        NomMer(arch=ARCH, init_cfg=init).init_weights()
    said = str(err.value)
    assert '2 missing:\n  cls_token\n  stages.1.blocks.0.mlp.fc2.weight' in said, said
    assert 'Likely fix' not in said  # no prefix, no other arch: no guess
    # the opt-out named in the message loads what fits
    init['allow_partial'] = True
    model = NomMer(arch=ARCH, init_cfg=init)
    model.init_weights()
    saved = load_checkpoint_file(path)['state_dict']
    assert torch.equal(model.stem.conv.weight, saved['stem.conv.weight'])


def test_a_config_importing_only_the_models_gets_the_check(tmp_path):
    """custom_imports=['nommer_mm.models'] in a fresh process: the backbone
    built from the config still stops on a file that does not fit (Python
    runs nommer_mm/__init__.py, which installs the check, first)."""
    import sys

    path = _save_backbone(tmp_path, ARCH, 'partial', drop=('cls_token',))
    cfg = tmp_path / 'cfg.py'
    cfg.write_text(
        "custom_imports = dict(imports=['nommer_mm.models'], "
        'allow_failed_imports=False)\n'
        f'model = dict(type={"NomMer"!r}, arch={ARCH!r}, '
        f"init_cfg=dict(type='Pretrained', checkpoint={str(path)!r}))\n"
    )
    code = (
        'from mmengine.config import Config\n'
        'from mmengine.registry import MODELS\n'
        f'cfg = Config.fromfile({str(cfg)!r})\n'
        'try:\n'
        '    MODELS.build(cfg.model).init_weights()\n'
        'except Exception as err:\n'
        '    print(type(err).__name__, err)\n'
    )
    proc = subprocess.run(
        [sys.executable, '-c', code], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    said = proc.stdout
    assert said.startswith('WeightsDoNotFitError NomMer: init_cfg Pretrained'), said
    assert 'does not fit this backbone' in said and '1 missing:\n  cls_token' in said


def _runner(work: Path, load_from: Path, **hook_args):
    """A real mmengine run of a model with a NomMer backbone, load_from a
    file, SafeCheckpointHook as the configs set it."""
    from mmengine.model import BaseModel
    from mmengine.runner import Runner

    class Model(BaseModel):
        def __init__(self):
            super().__init__()
            self.backbone = NomMer(arch=ARCH, out_type='cls_token', out_indices=(3,))
            self.head = nn.Linear(128, 3)

        def forward(self, inputs, data_samples=None, mode='tensor'):
            x = torch.stack(inputs)
            out = self.head(self.backbone(x)[0])
            return dict(loss=out.square().mean()) if mode == 'loss' else [out]

    class Data(torch.utils.data.Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            return dict(inputs=torch.rand(3, 32, 32))

    iterations = []

    from mmengine.hooks import Hook

    class Count(Hook):
        def before_train_iter(self, runner, batch_idx, data_batch=None):
            iterations.append(batch_idx)

    runner = Runner(
        model=Model(),
        work_dir=str(work),
        train_dataloader=dict(
            dataset=Data(), batch_size=2, sampler=dict(type='DefaultSampler')
        ),
        train_cfg=dict(by_epoch=True, max_epochs=1),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.0)),
        default_hooks=dict(checkpoint=dict(type='SafeCheckpointHook', **hook_args)),
        custom_hooks=[dict(type=Count)],
        load_from=str(load_from),
        experiment_name=f'fit-{uuid.uuid4().hex}',
    )
    return runner, iterations


def _load_from_file(tmp_path: Path, fits: bool) -> Path:
    """A whole-model checkpoint with another head (5 classes, not 3) and,
    unless ``fits``, one backbone weight missing."""
    model = NomMer(arch=ARCH, out_type='cls_token', out_indices=(3,))
    state = {'backbone.' + k: v for k, v in model.state_dict().items()}
    if not fits:
        del state['backbone.stages.3.blocks.0.norm1.weight']
    state['head.weight'] = torch.zeros(5, 128)  # another head: only a warning
    path = tmp_path / f'w-{fits}.pth'
    torch.save({'state_dict': state}, path)
    return path


def test_load_from_that_does_not_fit_stops_before_the_first_iteration(
    tmp_path, monkeypatch
):
    import nommer_mm  # noqa: F401  (SafeCheckpointHook)

    _zoo(monkeypatch)

    path = _load_from_file(tmp_path, fits=False)
    runner, iterations = _runner(tmp_path, path)
    with pytest.raises(WeightsDoNotFitError) as err:
        runner.train()
    said = str(err.value)
    assert f'load_from={path} does not fit the backbone' in said
    assert '1 missing:\n  stages.3.blocks.0.norm1.weight' in said
    assert 'head.weight' not in said
    assert 'default_hooks.checkpoint.allow_partial_load_from=True' in said
    assert iterations == []


@pytest.mark.slow
def test_load_from_opt_out_and_other_heads_train(tmp_path):
    """The opt-out trains on what fits; a checkpoint whose backbone fits
    and whose head differs trains (with a warning)."""
    import nommer_mm  # noqa: F401  (SafeCheckpointHook)

    path = _load_from_file(tmp_path, fits=False)
    runner, iterations = _runner(tmp_path / 'a', path, allow_partial_load_from=True)
    runner.train()
    assert iterations == [0]
    runner, iterations = _runner(tmp_path / 'b', _load_from_file(tmp_path, fits=True))
    runner.train()
    assert iterations == [0]


@pytest.mark.slow
def test_nommer_s_weights_into_nommer_t_name_the_arch(tmp_path):
    """The real archs: NomMer-S's backbone into NomMer-T."""
    from nommer_mm.checkpoint_fit import _arch_shapes

    _arch_shapes.cache_clear()
    with torch.no_grad():
        small = NomMer(arch='small')
    state = {'backbone.' + k: v for k, v in small.state_dict().items()}
    path = tmp_path / 'nommer-s.pth'
    torch.save({'state_dict': state}, path)
    del small, state
    init = dict(type='Pretrained', checkpoint=str(path), prefix='backbone.')
    with pytest.raises(WeightsDoNotFitError) as err:
        NomMer(arch='tiny', init_cfg=init).init_weights()
    said = str(err.value)
    assert '44 size mismatch:' in said, said[:400]
    assert "these weights are NomMer arch='small'" in said


# ------------------------------------------------------------------ images
def _image_cases(folder: Path) -> dict[str, tuple[Path, str]]:
    import cv2

    img = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    ok, jpg = cv2.imencode('.jpg', img)
    ok2, png = cv2.imencode('.png', img)
    assert ok and ok2
    jpg, png = jpg.tobytes(), png.tobytes()
    cases = {
        'empty': (b'', 'is empty (0 bytes)'),
        'cut jpeg': (jpg[: len(jpg) // 2], 'is cut short'),
        'cut png': (png[: len(png) // 2], 'is cut short'),
        'undecodable': (
            b'\xff\xd8' + b'not an image' * 8 + b'\xff\xd9',
            'does not decode',
        ),
    }
    out = {}
    for name, (data, words) in cases.items():
        path = folder / (name.replace(' ', '_') + ('.png' if 'png' in name else '.jpg'))
        path.write_bytes(data)
        out[name] = (path, words)
    return out


def test_the_transform_names_path_index_and_the_verifier(tmp_path):
    from nommer_mm.datasets import BrokenImageError, CheckedLoadImageFromFile

    load = CheckedLoadImageFromFile()
    for name, (path, words) in _image_cases(tmp_path).items():
        with pytest.raises(BrokenImageError) as err:
            load(dict(img_path=str(path), sample_idx=7))
        said = str(err.value)
        assert f'image {path} (index 7 of the dataset) {words}' in said, name
        assert 'tools/misc/verify_dataset.py' in said
        _clean(said)
        assert load.__class__(ignore_empty=True)(dict(img_path=str(path))) is None
    with pytest.raises(BrokenImageError, match='does not exist'):
        load(dict(img_path=str(tmp_path / 'gone.jpg'), sample_idx=0))


def _datasets(root: Path) -> dict:
    """A dataset of each codebase over generated data, its pipeline
    loading with the transform."""
    import importlib

    from demo_data import make_ade_layout, make_coco_layout, make_imagenet_layout
    from mmengine.registry import DefaultScope

    import nommer_mm  # noqa: F401  (registers CheckedLoadImageFromFile)

    def build(scope: str, make):
        importlib.import_module(f'{scope}.utils').register_all_modules(False)
        with DefaultScope.overwrite_default_scope(scope):
            return make()

    def cls():
        from mmpretrain.datasets import CustomDataset

        data = make_imagenet_layout(root / 'cls', {'train': 2}, size=32)
        return CustomDataset(
            data_root=str(data),
            data_prefix='train',
            pipeline=[dict(type='CheckedLoadImageFromFile'), dict(type='PackInputs')],
        )

    def det():
        from mmdet.datasets import CocoDataset

        data = make_coco_layout(root / 'coco', {'train': 3})
        return CocoDataset(
            data_root=str(data),
            ann_file='annotations/instances_train.json',
            data_prefix=dict(img='train/'),
            pipeline=[
                dict(type='CheckedLoadImageFromFile'),
                dict(type='LoadAnnotations', with_bbox=True),
                dict(type='PackDetInputs'),
            ],
        )

    def seg():
        from mmseg.datasets import ADE20KDataset

        data = make_ade_layout(root / 'ade', {'training': 3})
        return ADE20KDataset(
            data_root=str(data),
            data_prefix=dict(
                img_path='images/training', seg_map_path='annotations/training'
            ),
            pipeline=[
                dict(type='CheckedLoadImageFromFile'),
                dict(type='LoadAnnotations', reduce_zero_label=True),
                dict(type='PackSegInputs'),
            ],
        )

    return {
        'mmpretrain': build('mmpretrain', cls),
        'mmdet': build('mmdet', det),
        'mmseg': build('mmseg', seg),
    }


def test_a_broken_image_stops_every_codebase_with_path_and_index(tmp_path):
    """mmpretrain, mmdet and mmseg datasets, each with another kind of
    broken image; read in a DataLoader worker, as training meets it, the
    tools say the same one message."""
    from torch.utils.data import DataLoader

    from nommer_mm.datasets import BrokenImageError
    from nommer_mm.launch import stop_on_bad_input

    sources = _image_cases(tmp_path)
    kinds = dict(mmpretrain='empty', mmdet='cut jpeg', mmseg='undecodable')
    for codebase, ds in _datasets(tmp_path).items():
        index = len(ds) - 1
        path = ds.get_data_info(index)['img_path']
        source, words = sources[kinds[codebase]]
        Path(path).write_bytes(source.read_bytes())
        ds[0]  # the others load
        with pytest.raises(BrokenImageError) as err:
            ds[index]
        said = str(err.value)
        assert f'image {path} (index {index} of the dataset) {words}' in said
        assert 'verify_dataset.py' in said
        _clean(said)
        loader = DataLoader(
            ds, batch_size=1, num_workers=1, sampler=[index], collate_fn=list
        )
        with pytest.raises(SystemExit) as stop:
            with stop_on_bad_input():
                next(iter(loader))
        said = str(stop.value)
        assert said.startswith(f'error: image {path} (index {index} of the dataset)')
        assert len(said.splitlines()) == 1, said
        _clean(said)
    # segmentation label maps, named beside their image: one cut short, one
    # complete (PNG signature and end chunk) with its data damaged, which
    # mmseg's LoadAnnotations would fail to decode naming no file
    damages = [
        (lambda data: data[: len(data) // 2], 'is cut short'),
        (lambda d: d[:16] + bytes(len(d) - 32) + d[-16:], 'does not decode'),
    ]
    for index, (damage, words) in enumerate(damages):
        seg_map = Path(ds.get_data_info(index)['seg_map_path'])
        seg_map.write_bytes(damage(seg_map.read_bytes()))
        with pytest.raises(BrokenImageError) as err:
            ds[index]
        said = str(err.value)
        image = ds.get_data_info(index)['img_path']
        head = f'image {image} (index {index} of the dataset) (its label map {seg_map})'
        assert f'{head} {words}' in said, said
        _clean(said)


def test_a_damaged_checkpoint_is_named(good, tmp_path):
    """Complete in size, a record header overwritten inside."""
    import zipfile

    data = bytearray(good.read_bytes())
    last = zipfile.ZipFile(good).infolist()[-3]  # a tensor's record
    data[last.header_offset : last.header_offset + 4] = b'XXXX'
    path = tmp_path / 'damaged.pth'
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointFileError) as err:
        load_checkpoint_file(path)
    assert f'{path} is damaged: a record inside it does not read back' in str(err.value)
    _clean(str(err.value))


@pytest.mark.slow  # reading the configs imports all three codebases
def test_the_base_configs_load_images_with_the_check():
    """The three base configs load training images with
    CheckedLoadImageFromFile, and their evaluation pipelines keep mmcv's
    LoadImageFromFile (the inferencers look it up by that name) for
    CheckedImageLoadingHook to swap; the runner-level behaviour is
    tests/test_entry_points.py's."""
    from nommer_mm.launch import load_config

    def types(node, found):
        if isinstance(node, dict):
            if 'LoadImage' in str(node.get('type', '')):
                found.append(node['type'])
            for value in node.values():
                types(value, found)
        elif isinstance(node, (list, tuple)):
            for value in node:
                types(value, found)
        return found

    for base in (
        'cls_in1k.py',
        'det/cascade-mask-rcnn_fpn_ms-3x_coco.py',
        'seg/upernet_8xb2-160k_ade20k-512x512.py',
    ):
        cfg = load_config(str(ROOT / 'configs' / '_base_' / base))
        assert types(cfg.train_dataloader, []) == ['CheckedLoadImageFromFile'], base
        for key in ('val_dataloader', 'test_dataloader', 'tta_pipeline'):
            if key in cfg:
                assert set(types(cfg[key], [])) == {'LoadImageFromFile'}, (base, key)
        assert cfg.default_hooks.image_loading.type == 'CheckedImageLoadingHook'


# --------------------------------------------------- the command-line tools
DEMO = str(ROOT / 'configs/cls/nommer-tiny_2xb16_textures-demo.py')


def _one_line_error(proc: subprocess.CompletedProcess, words: str) -> None:
    assert proc.returncode != 0, proc.stdout[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith('error: ') and words in last, proc.stderr[-3000:]
    _clean(proc.stderr)


@pytest.mark.slow
def test_tools_exit_with_one_line(good, tmp_path):
    """tools/test.py, tools/train.py --resume and the converters, as
    launched, on an empty / cut-short / random file."""
    empty, empty_words = _broken('empty', good, tmp_path)
    cut, cut_words = _broken('cut', good, tmp_path)
    noise, noise_words = _broken('random', good, tmp_path)
    proc = run_tool(
        [
            str(ROOT / 'tools/test.py'),
            DEMO,
            str(empty),
            '--work-dir',
            str(tmp_path),
        ],
        cwd=tmp_path,
        timeout=300,
    )
    _one_line_error(proc, empty_words)
    proc = run_tool(
        [
            str(ROOT / 'tools/train.py'),
            DEMO,
            '--resume',
            str(cut),
            '--work-dir',
            str(tmp_path),
        ],
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode != 0 and 'it ' + cut_words[len(f'{cut} ') :] in proc.stderr
    _clean(proc.stderr)
    for tool in ('nommer2mm.py', 'peer2mm.py'):
        extra = ['visformer'] if tool == 'peer2mm.py' else []
        for path, words in (
            (noise, noise_words),
            (cut, cut_words),
            (empty, empty_words),
        ):
            proc = run_tool(
                [
                    str(ROOT / 'tools/model_converters' / tool),
                    *extra,
                    str(path),
                    str(tmp_path / 'o.pth'),
                ],
                cwd=tmp_path,
                timeout=300,
            )
            _one_line_error(proc, words)


@pytest.mark.slow
def test_training_on_a_zero_byte_image_stops_naming_it(tmp_path):
    """tools/train.py on the demo config whose images load with the check:
    a zero-byte image stops the run with its path and index."""
    from demo_data import make_imagenet_layout

    data = make_imagenet_layout(tmp_path / 'data', {'train': 2, 'val': 1}, size=32)
    broken = sorted((data / 'train').rglob('*.png'))[3]
    broken.write_bytes(b'')
    proc = run_tool(
        [
            str(ROOT / 'tools/train.py'),
            DEMO,
            '--work-dir',
            str(tmp_path / 'work'),
            '--cfg-options',
            f'train_dataloader.dataset.data_root={data}',
            f'val_dataloader.dataset.data_root={data}',
            f'test_dataloader.dataset.data_root={data}',
            'train_dataloader.dataset.pipeline.0.type=CheckedLoadImageFromFile',
            'train_cfg.max_iters=2',
            'train_dataloader.batch_size=8',
        ],
        cwd=tmp_path,
        timeout=300,
    )
    _one_line_error(proc, f'image {broken} (index ')
    assert 'tools/misc/verify_dataset.py' in proc.stderr


@pytest.mark.slow
def test_picture_tools_exit_with_one_line(good, tmp_path):
    """tools/image_demo.py, tools/visualization/visualize_nomination.py and
    tools/deployment/pytorch2onnx.py with an empty / cut-short checkpoint."""
    import cv2

    image = tmp_path / 'x.png'
    cv2.imwrite(str(image), np.zeros((32, 32, 3), np.uint8))
    empty, empty_words = _broken('empty', good, tmp_path)
    cut, cut_words = _broken('cut', good, tmp_path)
    nominations, onnx = tmp_path / 'n.png', tmp_path / 'm.onnx'
    for args, words, output in [
        (['image_demo.py', image, DEMO, '--weights', empty], empty_words, None),
        (
            ['visualization/visualize_nomination.py', DEMO, cut, image]
            + ['--out', nominations],
            cut_words,
            nominations,
        ),
        (
            ['deployment/pytorch2onnx.py', DEMO, empty, '--out', onnx],
            empty_words,
            onnx,
        ),
    ]:
        proc = run_tool(
            [ROOT / 'tools' / args[0], *args[1:]], cwd=tmp_path, timeout=300
        )
        _one_line_error(proc, words)
        assert output is None or not output.exists()


def test_the_check_is_swapped_in_through_dataset_wrappers(tmp_path):
    """check_image_loading (CheckedImageLoadingHook's step) replaces mmcv's
    loader inside ConcatDataset and RepeatDataset with the checked one,
    keeping its settings."""
    from demo_data import make_imagenet_layout
    from mmcv.transforms import LoadImageFromFile
    from mmengine.dataset import ConcatDataset, RepeatDataset
    from mmengine.registry import DefaultScope
    from mmpretrain.datasets import CustomDataset

    from nommer_mm.datasets import (
        BrokenImageError,
        CheckedLoadImageFromFile,
        check_image_loading,
    )

    data = make_imagenet_layout(tmp_path, {'a': 1, 'b': 1}, size=16)
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        parts = [
            CustomDataset(
                data_root=str(data),
                data_prefix=split,
                pipeline=[dict(type='LoadImageFromFile', to_float32=True)],
            )
            for split in ('a', 'b')
        ]
    repeated = RepeatDataset(parts[0], times=2)
    assert check_image_loading(repeated) == 1
    wrapped = ConcatDataset(parts)
    assert check_image_loading(wrapped) == 1  # the second part's
    for part in parts:
        (step,) = part.pipeline.transforms
        assert type(step) is CheckedLoadImageFromFile and step.to_float32
        assert isinstance(step, LoadImageFromFile)
    broken = Path(parts[1].get_data_info(0)['img_path'])
    broken.write_bytes(b'')
    with pytest.raises(BrokenImageError, match=f'image {broken} \\(index 0 of'):
        wrapped[len(parts[0])]  # the first image of the second part
    assert check_image_loading(wrapped) == 0  # already checked
