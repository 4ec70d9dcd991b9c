"""A checkpoint is untrusted input: no loader of ours, and no bare
``torch.load`` after ``import nommer_mm``, may run code from it; our own
checkpoints load everywhere, and no run loses its last good checkpoint."""

import copyreg
import io
import os
import pickle
import subprocess
import sys
import uuid

import numpy as np
import pytest
import torch
import torch.nn as nn
from cls_helpers import load_tool

import nommer_mm  # noqa: F401  (must not change how torch loads files)
from nommer_mm.torch_compat import TORCH_VERSION
from nommer_mm.checkpoint_safety import (
    UnsafeCheckpointError,
    load_checkpoint_file,
    mmengine_loads_through_plugin,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------ a real run
def _run(work_dir, hook='SafeCheckpointHook', epochs=2, **hook_args):
    """A real mmengine run (val, LR schedulers, save_best) writing
    checkpoints with message hub, optimizer and scheduler states."""
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
            return dict(inputs=torch.full((2,), float(i)))

    class Metric(BaseMetric):
        def process(self, data_batch, data_samples):
            self.results.append(np.float64(len(self.results)))

        def compute_metrics(self, results):
            return dict(acc=np.float64(sum(results)))  # a numpy scalar

    loader = dict(
        dataset=Data(), batch_size=2, sampler=dict(type='DefaultSampler', shuffle=False)
    )
    runner = Runner(
        model=Model(),
        work_dir=str(work_dir),
        train_dataloader=loader,
        val_dataloader=loader,
        val_cfg=dict(),
        val_evaluator=dict(type=Metric),
        train_cfg=dict(by_epoch=True, max_epochs=epochs, val_interval=1),
        optim_wrapper=dict(optimizer=dict(type='AdamW', lr=0.01)),
        param_scheduler=[
            dict(type='LinearLR', start_factor=0.1, end=1),
            dict(type='CosineAnnealingLR', begin=1, end=2),
        ],
        default_hooks=dict(
            checkpoint=dict(type=hook, interval=1, save_best='acc', **hook_args)
        ),
        experiment_name=f'ckpt-{uuid.uuid4().hex}',
        randomness=dict(seed=0),
    )
    runner.train()
    return runner


@pytest.fixture(scope='module')
def ours(tmp_path_factory):
    work = tmp_path_factory.mktemp('ours')
    _run(work)
    return work / 'epoch_2.pth'


@pytest.fixture(scope='module')
def stock(tmp_path_factory):
    """A checkpoint as mmengine 0.10.7 writes it: HistoryBuffer and numpy
    objects pickled."""
    work = tmp_path_factory.mktemp('stock')
    _run(work, hook='CheckpointHook')
    return work / 'epoch_2.pth'


def _bare_load(path):
    """``torch.load(weights_only=True)`` (the default from torch 2.6) in a
    fresh process that never imported nommer_mm."""
    code = f'import torch; torch.load({str(path)!r}, weights_only=True)'
    return subprocess.run(
        [sys.executable, '-c', code],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_our_checkpoints_load_with_a_bare_torch_load(ours, unpickler):
    assert _bare_load(ours).returncode == 0
    from mmengine.logging import HistoryBuffer

    ckpt = load_checkpoint_file(ours)
    lr = ckpt['message_hub']['log_scalars']['train/lr']
    assert isinstance(lr, HistoryBuffer) and lr.current() > 0
    assert ckpt['message_hub']['runtime_info']['best_score'] == 1.0


def test_stock_checkpoints_read_as_plain_data(stock, unpickler):
    plain = _bare_load(stock)
    assert plain.returncode != 0 and 'weights_only' in plain.stderr
    # in this process too: importing nommer_mm allowed nothing
    with pytest.raises(pickle.UnpicklingError):
        torch.load(stock, weights_only=True)
    ckpt = load_checkpoint_file(stock)
    trusted = torch.load(stock, weights_only=False)  # our own test file
    for key, buf in trusted['message_hub']['log_scalars'].items():
        got = ckpt['message_hub']['log_scalars'][key]
        assert type(got) is type(buf)
        for a, b in zip(got.data, buf.data):
            np.testing.assert_array_equal(a, b)
            assert a.dtype == b.dtype
    assert (
        ckpt['message_hub']['runtime_info']['best_score']
        == trusted['message_hub']['runtime_info']['best_score']
    )
    # exactly as mmengine loads it when resuming, inside our tools' scope
    from mmengine.runner.checkpoint import CheckpointLoader, _load_checkpoint

    before = dict(CheckpointLoader._schemes)
    with mmengine_loads_through_plugin():
        assert _load_checkpoint(str(stock))['meta']['epoch'] == 2
    assert CheckpointLoader._schemes == before


# torch.load's own default is weights_only=True from torch 2.6 on
_TORCH_SAFE_BY_DEFAULT = TORCH_VERSION >= (2, 6)


@pytest.fixture(params=['torch weights-only', 'restricted pickle'])
def unpickler(request, monkeypatch):
    """Both ways load_checkpoint_file reads a file: torch's weights-only
    unpickler with the stand-ins allowed for one load (torch >= 2.5), and
    the restricted pickle module older torch gets."""
    from nommer_mm import checkpoint_safety

    if request.param == 'restricted pickle':
        monkeypatch.setattr(checkpoint_safety, '_TORCH_TAKES_SAFE_GLOBALS', False)
    elif not checkpoint_safety._TORCH_TAKES_SAFE_GLOBALS:
        pytest.skip(f'torch {torch.__version__} has no safe_globals')
    return request.param


# ------------------------------------------------------------- attacks
class _Call:
    """Pickles to ``fn(*args)`` (then ``BUILD state``): a hand-made payload.
    ``cls`` makes pickle write NEWOBJ for ``copyreg.__newobj__``."""

    def __init__(self, fn, *args, state=None, cls=None):
        self.fn, self.args, self.state, self._cls = fn, args, state, cls

    @property
    def __class__(self):
        return self._cls or _Call

    def __call__(self, *args):
        return None

    def __reduce__(self):
        if self.state is None:
            return (self.fn, self.args)
        return (self.fn, self.args, self.state)


def _payloads(sentinel):
    from mmengine.logging import HistoryBuffer

    code = f'open({sentinel!r}, "w").write("ran")'
    # 1. widen HistoryBuffer's class-level statistics dict through
    #    __setstate__, then walk from its methods to exec
    widen = _Call(
        copyreg.__newobj__,
        HistoryBuffer,
        cls=HistoryBuffer,
        state={
            'statistics_methods': {
                n: 0
                for n in (
                    '__init__',
                    '__globals__',
                    '__class__',
                    '__getattribute__',
                    'get',
                )
            }
        },
    )
    init = _Call(getattr, HistoryBuffer, '__init__')
    glb = _Call(getattr, init, '__globals__')
    builtins = _Call(_Call(getattr, glb, 'get'), '__builtins__')
    exec_ = _Call(_Call(getattr, builtins, 'get'), 'exec')
    setstate_attack = [widen, _Call(exec_, code)]
    # 2. an object-dtype array from raw bytes (reading it dereferences them)
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct
    object_array = _Call(
        _reconstruct,
        np.ndarray,
        (0,),
        b'b',
        state=(1, (2,), np.dtype(object), False, b'\x41' * 16),
    )
    # 3. the classic
    classic = _Call(os.system, f'touch {sentinel}')
    # 4. getattr beyond the statistics methods
    escape = _Call(getattr, HistoryBuffer, '__init__')
    return {
        'setstate-widening': setstate_attack,
        'object-array': object_array,
        'reduce-os-system': classic,
        'getattr-escape': escape,
    }


def _write(obj, path):
    """A torch.save zip checkpoint around ``obj``, as an attacker would
    ship it (a state_dict beside the payload)."""
    torch.save({'state_dict': {'w': torch.zeros(1)}, 'meta': {'x': obj}}, path)
    return path


def _loaders(tmp_path):
    from mmengine.runner.checkpoint import _load_checkpoint, load_checkpoint

    def scoped(fn):
        def load(path):
            with mmengine_loads_through_plugin():
                return fn(path)

        return load

    def converter(module, *args):
        def load(path):
            tool = load_tool(f'tools/model_converters/{module}.py')
            tool.main([*args, str(path), str(tmp_path / 'out.pth')])

        return load

    def model_zoo(path):
        # open-mmlab://NAME reads the file open_mmlab.json in MMENGINE_HOME
        # names (OneDL's mmengine through a loader that retries unsafely)
        home = tmp_path / 'mmengine_home'
        home.mkdir(exist_ok=True)
        (home / 'open_mmlab.json').write_text(f'{{"nommer_evil": "{path}"}}')
        before = os.environ.get('MMENGINE_HOME')
        os.environ['MMENGINE_HOME'] = str(home)
        try:
            return _load_checkpoint('open-mmlab://nommer_evil')
        finally:
            if before is None:
                del os.environ['MMENGINE_HOME']
            else:
                os.environ['MMENGINE_HOME'] = before

    def resume_probe(path):
        from mmengine.config import Config

        from nommer_mm.launch import resolve_resume

        resolve_resume(Config(dict(work_dir=str(tmp_path))), str(path))

    def test_tool(path):
        from nommer_mm.launch import check_weights_fit

        check_weights_fit(nn.Linear(1, 1), str(path))

    ours = 'refused to load'  # load_checkpoint_file's refusal, path first
    bare = {'bare torch.load': (lambda p: torch.load(p), 'Weights only load failed')}
    return {
        **(bare if _TORCH_SAFE_BY_DEFAULT else {}),
        'torch.load weights_only=True': (
            lambda p: torch.load(p, weights_only=True),
            'Weights only load failed',
        ),
        'load_checkpoint_file': (load_checkpoint_file, ours),
        'mmengine _load_checkpoint (resume, load_from)': (
            scoped(lambda p: _load_checkpoint(str(p))),
            ours,
        ),
        # upstream mmengine reads it with a bare torch.load, OneDL's with a
        # loader that retries unsafely: our scope guards both
        'mmengine open-mmlab:// (model zoo file)': (scoped(model_zoo), ours),
        'init_cfg=Pretrained': (
            scoped(lambda p: load_checkpoint(nn.Linear(1, 1), str(p))),
            ours,
        ),
        'nommer2mm': (converter('nommer2mm'), ours),
        'peer2mm': (converter('peer2mm', 'gcvit'), ours),
        'train.py --resume': (resume_probe, ours),
        'test.py weight check': (test_tool, ours),
    }


@pytest.mark.parametrize(
    'payload',
    ['setstate-widening', 'object-array', 'reduce-os-system', 'getattr-escape'],
)
def test_payloads_are_refused_by_every_loader(payload, unpickler, tmp_path):
    """Each loader refuses the file itself (its refusal message, naming the
    file), not merely exits for another reason after reading it."""
    from mmengine.logging import HistoryBuffer

    sentinel = tmp_path / 'ran'
    path = _write(_payloads(str(sentinel))[payload], tmp_path / 'evil.pth')
    statistics = dict(HistoryBuffer._statistics_methods)
    for name, (load, refusal_words) in _loaders(tmp_path).items():
        try:
            load(path)
        except (pickle.UnpicklingError, SystemExit) as refusal:
            err = refusal
        else:
            raise AssertionError(f'{name} loaded the {payload} payload')
        assert not sentinel.exists(), name
        assert HistoryBuffer._statistics_methods == statistics, name
        said = str(err)
        assert refusal_words in said, (name, said)
        if refusal_words == 'refused to load':
            assert f'{path}: refused to load' in said or (
                str(path) in said and ': refused to load: ' in said
            ), (name, said)
    assert not (tmp_path / 'out.pth').exists()


@pytest.mark.slow
def test_test_tool_refuses_a_payload_checkpoint(tmp_path):
    """Through ``tools/test.py`` itself (a subprocess: its own imports)."""
    sentinel = tmp_path / 'ran'
    path = _write(_payloads(str(sentinel))['setstate-widening'], tmp_path / 'evil.pth')
    cfg = os.path.join(ROOT, 'configs/cls/nommer-tiny_2xb16_textures-demo.py')
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, 'tools/test.py'),
            cfg,
            str(path),
            '--work-dir',
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode != 0
    assert f'error: {path}: refused to load' in proc.stderr
    assert 'Traceback' not in proc.stderr  # one line, the refusal
    assert not sentinel.exists()


@pytest.mark.skipif(
    not hasattr(torch.serialization, 'get_safe_globals'),
    reason='torch < 2.4 has no allow-list an import could extend',
)
def test_import_registers_nothing_with_torch():
    # (importing torch.distributed.tensor, as mmengine does, makes torch
    # allow its own DTensor classes: torch's, not ours)
    code = (
        'import torch; before = torch.serialization.get_safe_globals(); '
        'import nommer_mm; '
        'added = [g for g in torch.serialization.get_safe_globals() '
        'if g not in before]; '
        'print([g for g in added if not getattr(g, "__module__", "")'
        '.startswith("torch.")])'
    )
    proc = subprocess.run(
        [sys.executable, '-c', code], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0 and proc.stdout.strip() == '[]', proc


def test_records_reject_odd_shapes_of_state(tmp_path, unpickler):
    """Numbers only: a byte count that does not fit the shape is refused."""
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:
        from numpy.core.multiarray import _reconstruct
    short = _Call(
        _reconstruct,
        np.ndarray,
        (0,),
        b'b',
        state=(1, (4,), np.dtype('f8'), False, b'\0' * 8),
    )
    buf = io.BytesIO()
    torch.save({'x': short}, buf)
    buf.seek(0)
    with pytest.raises(UnsafeCheckpointError, match='8 bytes for shape'):
        load_checkpoint_file(buf)


# ------------------------------------------------- nothing lost, clear words
def test_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    """A write that dies half-way (disk full, kill) with max_keep_ckpts=1:
    the earlier checkpoint survives and no torn file takes a checkpoint's
    name. (mmengine's CheckpointHook removes the old one first.)"""
    from mmengine.fileio.backends import LocalBackend

    real_put = LocalBackend.put
    calls = []

    def put(self, obj, filepath):
        calls.append(str(filepath))
        if str(filepath).endswith('epoch_2.pth.part'):
            with open(filepath, 'wb') as f:
                f.write(obj[: len(obj) // 2])
            raise OSError(28, 'No space left on device')
        return real_put(self, obj, filepath)

    monkeypatch.setattr(LocalBackend, 'put', put)
    with pytest.raises(OSError, match='No space'):
        _run(tmp_path, max_keep_ckpts=1)
    assert (tmp_path / 'epoch_1.pth').exists()
    assert not (tmp_path / 'epoch_2.pth').exists()
    assert (tmp_path / 'epoch_2.pth.part').exists()  # torn, under no name
    assert load_checkpoint_file(tmp_path / 'epoch_1.pth')['meta']['epoch'] == 1


def test_max_keep_ckpts_removes_after_writing(tmp_path):
    _run(tmp_path, epochs=3, max_keep_ckpts=1)
    kept = sorted(p.name for p in tmp_path.glob('*.pth'))
    assert kept == ['best_acc_epoch_1.pth', 'epoch_3.pth'], kept
    assert not list(tmp_path.glob('*.part'))


def _resume(tmp_path, arg='auto'):
    from mmengine.config import Config

    from nommer_mm.launch import resolve_resume

    cfg = Config(dict(work_dir=str(tmp_path)))
    resolve_resume(cfg, arg)
    return cfg


def test_resume_skips_a_torn_newest_checkpoint(ours, tmp_path, capfd):
    good = tmp_path / 'epoch_2.pth'
    good.write_bytes(ours.read_bytes())
    data = ours.read_bytes()
    (tmp_path / 'epoch_3.pth').write_bytes(data[: len(data) // 2])
    (tmp_path / 'last_checkpoint').write_text(str(tmp_path / 'epoch_3.pth'))
    assert _resume(tmp_path).load_from == str(good)
    err = capfd.readouterr().err
    assert f'skipped {tmp_path / "epoch_3.pth"}' in err
    assert f'resuming from {good}' in err


@pytest.mark.parametrize('marker', ['', 'dangling'])
def test_resume_with_empty_or_dangling_marker(ours, tmp_path, capfd, marker):
    text = '' if not marker else str(tmp_path / 'epoch_9.pth')
    (tmp_path / 'last_checkpoint').write_text(text)
    with pytest.raises(SystemExit) as err:  # and nothing to fall back on
        _resume(tmp_path)
    assert 'last_checkpoint' in str(err.value) and '--resume CKPT' in str(err.value)
    said = capfd.readouterr().err
    assert ('is empty' in said) if not marker else ('does not exist' in said)
    (tmp_path / 'epoch_1.pth').write_bytes(ours.read_bytes())
    assert _resume(tmp_path).load_from == str(tmp_path / 'epoch_1.pth')
    said = capfd.readouterr().err
    marker_path = tmp_path / 'last_checkpoint'
    what = 'is empty' if not marker else f'names {text}, which does not exist'
    assert f'{marker_path} {what}' in said  # what is wrong with the pointer
    assert 'falling back to the newest checkpoint' in said
    assert f'resuming from {tmp_path / "epoch_1.pth"}: the newest' in said


def test_resume_from_a_weights_only_checkpoint_points_to_load_from(tmp_path):
    path = tmp_path / 'converted.pth'
    torch.save(
        dict(state_dict={'w': torch.zeros(1)}, meta=dict(converter='nommer2mm')), path
    )
    with pytest.raises(SystemExit) as err:
        _resume(tmp_path, str(path))
    assert 'weights only' in str(err.value)
    assert f'load_from={path}' in str(err.value)


def test_test_tool_refuses_weights_that_do_not_fit(tmp_path):
    from nommer_mm.launch import check_weights_fit

    model = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    path = tmp_path / 'w.pth'
    torch.save({'state_dict': {'0.weight': torch.zeros(3, 3)}}, path)
    with pytest.raises(SystemExit) as err:
        check_weights_fit(model, str(path))
    msg = str(err.value)
    assert '3 missing' in msg and '1.weight' in msg
    assert '0.weight: checkpoint (3, 3), model (3, 2)' in msg
    torch.save({'state_dict': model.state_dict()}, path)
    check_weights_fit(model, str(path))  # fits: no error


def test_pretrained_that_leaves_weights_out_stops(tmp_path):
    """init_cfg=Pretrained: missing and mis-shaped backbone weights stop
    the build with the list; ``allow_partial=True`` loads what fits and
    gives the framed warning instead; a complete classification checkpoint
    (whose only gaps are the dense output norms) passes silently."""
    import logging

    from mmengine.logging import MMLogger

    from nommer_mm import NomMer
    from nommer_mm.checkpoint_safety import WeightsDoNotFitError

    records = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    logger = MMLogger.get_instance(f'pretrained-{uuid.uuid4().hex}')
    logger.addHandler(handler)  # the current logger: where print_log goes
    arch = dict(
        embed_dims=16,
        depths=[1, 1, 1, 1],
        num_heads=[1, 1, 2, 2],
        bottleneck_ratios=[2, 2],
    )
    cls = NomMer(arch=arch, out_type='cls_token', out_indices=(3,))
    state = {'backbone.' + k: v for k, v in cls.state_dict().items()}
    torch.save({'state_dict': state}, tmp_path / 'full.pth')
    del state['backbone.stages.2.blocks.0.mlp.fc1.weight']
    state['backbone.stem.conv.weight'] = torch.zeros(1)
    torch.save({'state_dict': state}, tmp_path / 'part.pth')

    def build(name, **extra):
        return NomMer(
            arch=arch,
            init_cfg=dict(
                type='Pretrained',
                checkpoint=str(tmp_path / f'{name}.pth'),
                prefix='backbone.',
                **extra,
            ),
        )

    build('full').init_weights()
    assert 'random initialisation' not in '\n'.join(records)
    with pytest.raises(WeightsDoNotFitError) as err:
        build('part').init_weights()
    said = str(err.value)
    assert '1 missing:\n  stages.2.blocks.0.mlp.fc1.weight' in said
    assert 'stem.conv.weight: checkpoint (1,), model (16, 3, 4, 4)' in said
    assert 'allow_partial=True' in said
    records.clear()
    build('part', allow_partial=True).init_weights()
    said = '\n'.join(records)
    assert (
        'leaves these weights at their random initialisation' in said
        and '!' * 72 in said
    )
    assert '1 missing:\n  stages.2.blocks.0.mlp.fc1.weight' in said


def test_the_restricted_unpickler_builds_only_data():
    """The unpickler of torch < 2.5 (tested on every torch): BUILD on a
    function or a class (whose attributes torch reads later, e.g.
    ``dump_patches``), a persistent id other than a storage and copyreg
    extension codes are refused."""
    from nommer_mm.checkpoint_safety import _reconstruct, _RestrictedPickle

    build_on_function = (
        b'\x80\x02cnumpy.core.multiarray\n_reconstruct\n'
        b'N}X\x0c\x00\x00\x00dump_patches\x88s\x86b.'
    )
    build_on_class = b'\x80\x02ctorch\nTensor\nN}X\x01\x00\x00\x00x\x88s\x86b.'
    module_id = b'\x80\x02X\x06\x00\x00\x00module\x85Q.'
    extension = b'\x80\x02\x82\x01.'
    for raw, words in [
        (build_on_function, 'BUILD of function'),
        (build_on_class, 'BUILD of _TensorMeta'),  # torch.Tensor's metaclass
        (module_id, 'other than a storage'),
        (extension, 'extension codes'),
    ]:
        with pytest.raises(UnsafeCheckpointError, match=words):
            _RestrictedPickle.load(io.BytesIO(raw))
    assert not hasattr(_reconstruct, 'dump_patches')
    assert not hasattr(torch.Tensor, 'x')


def test_torchscript_archives_are_refused(tmp_path, unpickler):
    """torch < 2.6 hands a zip with constants.pkl to torch.jit.load, which
    runs scripted code, whatever weights_only says."""
    path = tmp_path / 'scripted.pth'
    torch.jit.save(torch.jit.script(nn.Linear(1, 1)), str(path))
    for source in (path, io.BytesIO(path.read_bytes())):
        with pytest.raises(UnsafeCheckpointError, match='TorchScript archive'):
            load_checkpoint_file(source)
