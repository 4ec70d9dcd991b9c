"""tools/analysis_tools/benchmark.py and benchmark_table.py: figures checked
by relations that hold by construction (a bigger batch of the same model
takes longer, more memory and keeps more for backward) and FLOPs pinned."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from cls_helpers import load_tool

ROOT = Path(__file__).resolve().parents[2]
SMALL = (
    "dict(type='NomMer', arch=dict(embed_dims=32, depths=[1, 1, 1, 1],"
    ' num_heads=[2, 2, 2, 4], bottleneck_ratios=[2, 2]))'
)
# One image's traced multiply-adds as the tool counted them once; they must
# not move (NomMer-T's is configs/cls/metafile.yml's figure).
PINNED_FLOPS = {(SMALL, 128): 111_688_384, ('NomMer-T', 224): 5_486_108_928}


@pytest.fixture
def bench():
    return load_tool('tools/analysis_tools/benchmark.py')


def _run(*args: str, timeout: int = 1200) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, str(ROOT / 'tools/analysis_tools/benchmark.py'), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_a_bigger_batch_takes_longer_more_memory_and_more_saved(tmp_path):
    """One run, batches 1 and 8 of the same model alternating, both modes,
    peak memory in fresh processes, bytes kept for backward and FLOPs: batch
    8 is eight times the work of batch 1, so its fastest step is slower, its
    peak memory and its saved tensors larger; one image's FLOPs are the same
    and pinned. The Markdown table of the JSON shows each row's figures."""
    out = tmp_path / 'bench.json'
    proc = _run(
        '--models', SMALL, '--batch', '1', '8', '--shape', '128', '128',
        '--warmup', '1', '--reps', '3', '--saved', '--flops', '--json', str(out),
    )  # fmt: skip
    assert 'inference' in proc.stdout and 'training step' in proc.stdout
    run, *rows = json.loads(out.read_text())
    assert run['mode'] == 'run' and run['device'].startswith('CPU')
    assert (run['shape'], run['dtype'], run['reps']) == ([128, 128], 'fp32', 3)
    assert 'live memory' in run['memory']
    assert [(r['mode'], r['batch']) for r in rows] == [
        ('infer', 1),
        ('infer', 8),
        ('train', 1),
        ('train', 8),
    ]
    for one, eight in (rows[:2], rows[2:]):
        assert eight['min_ms'] > one['min_ms'], (one, eight)
        assert eight['peak_mib'] > one['peak_mib'], (one, eight)
        assert one['throughput_vs_first'] == 1.0
        assert (
            eight['throughput_vs_first'] == eight['images_per_s'] / one['images_per_s']
        )
    assert rows[3]['saved_mib'] > rows[2]['saved_mib'] > 0
    assert 'saved_mib' not in rows[0]  # nothing is kept in inference
    for r in rows:
        assert r['min_ms'] <= r['median_ms'] <= r['max_ms']
        assert r['images_per_s'] == pytest.approx(r['batch'] / r['median_ms'] * 1e3)
        assert r['flops_per_image'] == PINNED_FLOPS[(SMALL, 128)]

    table = load_tool('tools/analysis_tools/benchmark_table.py')
    lines = table.table('bench', json.loads(out.read_text())).splitlines()
    assert lines[0].startswith(f'**bench**: {run["device"]}; fp32, 128x128')
    body = [ln for ln in lines if ln.startswith('| dict(')]
    assert len(body) == 4
    for line, r in zip(body, rows):
        cells = [c.strip() for c in line.strip('|').split('|')]
        assert cells[1:4] == [
            str(r['batch']),
            {'infer': 'inference', 'train': 'training'}[r['mode']],
            f'{r["images_per_s"]:.1f}',
        ]
        assert cells[5] == f'{r["peak_mib"]:.0f}'
        assert cells[7] == f'{r["flops_per_image"] / 1e9:.2f}'


@pytest.mark.slow
def test_flops_of_a_model_by_name_are_pinned(bench):
    """A model by name builds its config; NomMer-T's traced FLOPs at 224 are
    the pinned count."""
    args = bench.make_parser().parse_args(['--device', 'cpu', '--mode', 'infer'])
    runner = bench.Runner('NomMer-T', 1, args)
    assert runner.name == 'NomMer-T'
    assert runner.flops_per_image() == PINNED_FLOPS[('NomMer-T', 224)]


def test_names_resolve_and_bad_input_is_named(bench, capsys):
    """Every model name is a config that exists; an unknown model, a batch
    or a device that cannot run stop with the argument and the fix."""
    for name in bench.NAMES:
        assert Path(bench.config_path(name)).is_file(), name
    with pytest.raises(SystemExit, match="--models 'Swin-X'.*give a name.*Swin-T"):
        bench.config_path('Swin-X')
    parser = bench.make_parser()
    with pytest.raises(SystemExit, match=r'--batch \[8, 0\]: give positive sizes'):
        bench.check_args(parser.parse_args(['--batch', '8', '0', '--device', 'cpu']))
    with pytest.raises(SystemExit, match="--device 'tpu': use cpu or cuda"):
        bench.check_args(parser.parse_args(['--device', 'tpu']))


def test_a_run_stopped_while_writing_keeps_the_modes_it_finished(
    bench, tmp_path, monkeypatch
):
    """--json is rewritten after every mode; a stop in the middle of the
    last write (here an exception after half the text) leaves the file of
    the previous write whole: the run and the inference rows."""
    out = tmp_path / 'bench.json'
    writes = []
    write_text = Path.write_text

    def stopped_third_time(self, text, *args, **kwargs):
        if self.name.startswith(out.name):
            writes.append(self.name)
            if len(writes) == 3:  # after the header, inference, training
                write_text(self, text[: len(text) // 2], *args, **kwargs)
                raise KeyboardInterrupt('stopped while writing')
        return write_text(self, text, *args, **kwargs)

    monkeypatch.setattr(Path, 'write_text', stopped_third_time)
    argv = ['benchmark.py', '--models', SMALL, '--batch', '1', '--shape', '64']
    argv += ['64', '--warmup', '1', '--reps', '1', '--no-memory', '--device', 'cpu']
    monkeypatch.setattr(sys, 'argv', [*argv, '--json', str(out)])
    with pytest.raises(KeyboardInterrupt):
        bench.main()
    monkeypatch.undo()
    assert len(writes) == 3
    rows = json.loads(out.read_text())
    assert [r['mode'] for r in rows] == ['run', 'infer']
    assert rows[1]['batch'] == 1 and rows[1]['min_ms'] <= rows[1]['max_ms']


def test_table_skips_a_file_that_is_not_benchmark_json(tmp_path, capsys):
    """A folder of JSON files: a file that is not benchmark.py's is named on
    stderr and skipped; a run stopped before any mode says so."""
    table = load_tool('tools/analysis_tools/benchmark_table.py')
    run = dict(mode='run', device='CPU, 2 threads', torch='2', shape=[64, 64])
    run.update(dtype='bf16', options='', warmup=1, reps=2, memory=None)
    (tmp_path / 'a.json').write_text(json.dumps([run]))
    (tmp_path / 'broken.json').write_text('[{"mode": "infer"')
    assert table.main([str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert 'skipped' in err and 'broken.json' in err
    assert out.startswith('**a**: CPU, 2 threads; bf16, 64x64')
    assert '| (no mode finished) |' in out


@pytest.mark.slow
def test_dense_models_run_their_whole_training_step(bench):
    """A detector or segmentor config runs the real step: mode='loss' on
    annotated images through the data preprocessor (RPN, the three Cascade
    stages' boxes and masks; UperNet's decode and auxiliary heads), and
    mode='predict' in inference."""
    import torch

    cases = [
        (
            'configs/det/cascade-mask-rcnn_nommer-t_fpn_ms-3x_coco.py',
            {'loss_rpn_cls', 's0.loss_cls', 's2.loss_bbox', 's2.loss_mask'},
        ),
        (
            'configs/seg/upernet_nommer-t_8xb2-160k_ade20k-512x512.py',
            {'decode.loss_ce', 'aux.loss_ce'},
        ),
    ]
    for config, parts in cases:
        step, name = bench.build(config, backbone_only=False)
        assert isinstance(step, bench.DenseStep), name
        # dtypes mmcv's RoI ops cannot take stop before the run, with the fix
        if 'det' in config:
            with pytest.raises(SystemExit, match='no bfloat16 CUDA kernel.*fp16'):
                bench.check_dense_dtype(step, 'bf16', 'cuda')
            with pytest.raises(SystemExit, match='float32 only; use --dtype fp32'):
                bench.check_dense_dtype(step, 'fp16', 'cpu')
            bench.check_dense_dtype(step, 'fp16', 'cuda')
        bench.check_dense_dtype(step, 'fp32', 'cpu')
        if 'seg' in config:
            # no RoI ops: autocast runs on the CPU too
            bench.check_dense_dtype(step, 'bf16', 'cpu')
            # pad to 32, not to the recipe's 512x512 crop
            step.model.data_preprocessor.size = None
            step.model.data_preprocessor.size_divisor = 32
        torch.manual_seed(0)
        x = step.example_input(2, (96, 128), 'cpu')
        step.train()
        loss = step(x)
        assert parts <= set(step.log_vars), sorted(step.log_vars)
        assert torch.isfinite(loss) and loss > 0
        loss.backward()
        grad = step.model.backbone.stem.conv.weight.grad
        assert grad is not None and grad.abs().sum() > 0
        step.eval()
        with torch.no_grad():
            results = step(x)
        assert len(results) == 2
        if 'det' in config:
            assert results[0].pred_instances.masks.shape[-2:] == (96, 128)
        else:
            assert results[0].pred_sem_seg.data.shape[-2:] == (96, 128)


@pytest.mark.slow
def test_live_memory_is_repeatable(tmp_path):
    """CPU peak memory counts live memory, so two identical runs give the
    same peak to a few MiB (the default allocator's resident set moves by
    tens of MiB between identical runs)."""

    def peak(name):
        out = tmp_path / f'{name}.json'
        _run('--models', SMALL, '--mode', 'train', '--batch', '4', '--shape', '128',
             '128', '--warmup', '1', '--reps', '1', '--json', str(out))  # fmt: skip
        (row,) = [r for r in json.loads(out.read_text()) if r['mode'] == 'train']
        return row['peak_mib']

    first, second = peak('a'), peak('b')
    assert first > 5 and abs(first - second) < 3
