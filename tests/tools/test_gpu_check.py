"""tools/gpu_check.py: its harness on the CPU (--allow-cpu), its comparisons
with negative controls, its dist runs against tools/test.py, and how it
stops a dist run past its time or when it is stopped itself."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from cls_helpers import load_tool, run_tool

ROOT = Path(__file__).resolve().parents[2]
# The checks' CPU stand-in (--allow-cpu) runs fp16 autocast on the CPU and
# asks torch for the attention backend: torch 2.4 on.
needs_cpu_stand_in = pytest.mark.skipif(
    not hasattr(torch, 'get_autocast_dtype'),
    reason=f'torch {torch.__version__}: no CPU fp16 autocast, no device-type queries',
)
no_gpu = pytest.mark.skipif(
    torch.cuda.is_available(), reason='a GPU is present: gpu_check runs for real'
)


@pytest.fixture
def gpu_check():
    return load_tool('tools/gpu_check.py')


@pytest.fixture
def small_classifiers(gpu_check, tmp_path, monkeypatch):
    """gpu_check's classifier list made of one small NomMer classifier (the
    full-size ones are checked by the slow harness test)."""
    config = tmp_path / 'small_nommer.py'
    config.write_text(f"""
_base_ = {str(ROOT / 'configs/cls/nommer-tiny_8xb128_in1k.py')!r}
model = dict(
    backbone=dict(arch=dict(_delete_=True, embed_dims=16, depths=[1, 2, 2, 1],
                            num_heads=[1, 1, 2, 2], bottleneck_ratios=[2, 2])),
    head=dict(in_channels=128, num_classes=10))
""")
    monkeypatch.setattr(gpu_check, 'CLASSIFIERS', {'small NomMer': str(config)})
    return str(config)


def _rows(report) -> dict:
    return {r['name']: r for r in report.rows}


@needs_cpu_stand_in
def test_fp32_comparison_is_exact_and_fails_a_perturbed_op(
    gpu_check, small_classifiers, tmp_path, monkeypatch
):
    """On one device the fp32 comparison is exact (same weights, input and,
    replayed, nominations). Negative control: the device's copy with one
    op perturbed (the head's Linear output scaled by 1 + 1e-3) must fail
    the fp32 row, also after the fp64 rounding bound is taken into account;
    bf16 and fp16 rows have tolerances wide enough to pass it."""
    report = gpu_check.Report(tmp_path / 'plain.json', {'device': 'cpu'})
    gpu_check.check_backbones('cpu', report, 64, 2, None)
    fp32 = _rows(report)['small NomMer fp32']
    assert fp32['ok'] and fp32['logits_rel'] == 0 and fp32['grads_rel'] == 0, fp32
    assert fp32['nominations_agree'] == 1

    exact_copy = gpu_check.device_copy

    def perturbed_copy(model, device):
        copy = exact_copy(model, device)
        # the head's Linear: a scale before a normalisation would cancel
        head = [m for m in copy.modules() if isinstance(m, torch.nn.Linear)][-1]
        head.register_forward_hook(lambda module, args, out: out * (1 + 1e-3))
        return copy

    monkeypatch.setattr(gpu_check, 'device_copy', perturbed_copy)
    report = gpu_check.Report(tmp_path / 'perturbed.json', {'device': 'cpu'})
    gpu_check.check_backbones('cpu', report, 64, 2, None)
    fp32 = _rows(report)['small NomMer fp32']
    assert not fp32['ok'], fp32
    tol_logits, tol_grads = gpu_check.TOLERANCES['fp32']
    assert fp32['logits_rel'] > tol_logits or fp32['grads_rel'] > tol_grads, fp32
    assert 'cpu_fp32_vs_fp64_grads' in fp32  # the rounding bound was consulted
    assert report.write(complete=True)['failed'] >= 1


def test_fp32_bound_follows_the_cpus_own_rounding(gpu_check):
    """Beyond the fixed fp32 tolerance a figure passes within ROUNDING times
    the CPU fp32's own distance from fp64; each figure has its own bound."""
    tol_logits, tol_grads = gpu_check.TOLERANCES['fp32']
    step = gpu_check.ROUNDING
    within = gpu_check.within_fp32_rounding
    assert within(tol_logits, tol_grads, (0.0, 0.0))
    assert not within(tol_logits, 3 * tol_grads, (0, 0))
    assert within(tol_logits, 3 * tol_grads, (0.0, 3 * tol_grads / step))
    assert not within(tol_logits, 3 * tol_grads, (0.0, 2 * tol_grads / step))
    # the gradients' distance does not widen the logits' bound
    assert not within(3 * tol_logits, tol_grads, (0, 1))


@needs_cpu_stand_in
def test_fp32_bound_runs_on_a_real_model(
    gpu_check, small_classifiers, tmp_path, monkeypatch
):
    """The path a GPU takes when an fp32 figure is beyond its tolerance: with
    the tolerances made negative even the exact comparison is beyond them,
    so the fp32 row measures the CPU fp32's distance from fp64 and passes
    within it."""
    monkeypatch.setitem(gpu_check.TOLERANCES, 'fp32', (-1.0, -1.0))
    report = gpu_check.Report(tmp_path / 'gpu_check.json', {'device': 'cpu'})
    gpu_check.check_backbones('cpu', report, 64, 2, None)
    row = _rows(report)['small NomMer fp32']
    assert row['ok'] and row['logits_rel'] == 0 and row['grads_rel'] == 0, row
    # fp64 is another computation: a small distance, not none
    assert 0 < row['cpu_fp32_vs_fp64_logits'] < 1e-5, row
    assert 0 < row['cpu_fp32_vs_fp64_grads'] < 1e-4, row


def test_report_is_rewritten_after_every_row(gpu_check, tmp_path):
    """gpu_check.json is current after each row, marked incomplete until the
    end; never a half-written file (written beside, then renamed)."""
    path = tmp_path / 'gpu_check.json'
    report = gpu_check.Report(path, {'device': 'cpu'})

    def read():
        return json.loads(path.read_text())

    report.write(complete=False)
    assert read()['rows'] == [] and read()['complete'] is False
    report.add('ops', 'nms', True, kept=3)
    assert read()['rows'][0] == dict(section='ops', name='nms', ok=True, kept=3)
    assert read()['failed'] == 0 and read()['complete'] is False
    report.add('ops', 'RoIAlign', False, forward_rel=0.5)
    assert read()['failed'] == 1 and len(read()['rows']) == 2
    report.write(complete=True)
    assert read()['complete'] is True and read()['failed'] == 1
    assert read()['environment'] == {'device': 'cpu'}
    assert [p.name for p in tmp_path.iterdir()] == ['gpu_check.json']


@needs_cpu_stand_in
def test_goes_on_after_a_model_that_raises(
    gpu_check, small_classifiers, tmp_path, monkeypatch
):
    """A model whose check raises (out of memory, say) gets a failed row
    naming the error; the models after it are still checked."""
    models = {'broken': 'broken.py', 'small NomMer': small_classifiers}
    monkeypatch.setattr(gpu_check, 'CLASSIFIERS', models)
    monkeypatch.setattr(gpu_check, 'ATTENTION_MODELS', tuple(models))
    build = gpu_check.build_classifier

    def build_or_fail(config):
        if config == 'broken.py':
            raise torch.cuda.OutOfMemoryError('out of memory (simulated)')
        return build(config)

    monkeypatch.setattr(gpu_check, 'build_classifier', build_or_fail)
    report = gpu_check.Report(tmp_path / 'gpu_check.json', {'device': 'cpu'})
    gpu_check.check_attention('cpu', report, 64, 2)
    gpu_check.check_backbones('cpu', report, 64, 2, None)
    assert [(r['section'], r['name']) for r in report.rows] == [
        ('attention', 'broken raised'),
        ('attention', 'small NomMer bf16 training'),
        ('attention', 'small NomMer bf16 inference'),
        ('backbones', 'broken raised'),
        ('backbones', 'small NomMer fp32'),
        ('backbones', 'small NomMer bf16'),
        ('backbones', 'small NomMer fp16'),
    ]
    for row in report.rows:
        raised = row['name'] == 'broken raised'
        assert row['ok'] is not raised, row
        assert raised == ('out of memory (simulated)' in row.get('error', ''))


@pytest.mark.slow
def test_skips_without_a_gpu():
    proc = subprocess.run(
        [sys.executable, str(ROOT / 'tools/gpu_check.py')],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if 'skipped' not in proc.stdout:
        pytest.skip('a GPU is present: tools/gpu_check.py runs for real')
    assert proc.returncode == 0


def _gpu_check_on_cpu(out, *only_and_options):
    """tools/gpu_check.py --allow-cpu --only ...: its report, which must
    have no failed check."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / 'tools/gpu_check.py'), '--allow-cpu']
        + ['--only', *only_and_options, '--out', str(out)],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / 'gpu_check.json').read_text())
    assert report['failed'] == 0
    return report


@pytest.mark.slow
@no_gpu
def test_harness_runs_on_the_cpu(gpu_check, tmp_path):
    """The whole harness with the CPU as the device: mmcv's ops, NomMer-T
    under fp32, bf16 and fp16 autocast against fp32 on the same weights,
    the attention backends of the three transformers, torch.compile of
    NomMer-T as one graph, the report file."""
    report = _gpu_check_on_cpu(
        tmp_path, 'ops', 'backbones', 'attention', 'compile',
        '--models', 'NomMer-T', '--size', '64', '--batch', '2',
    )  # fmt: skip
    assert report['complete'] is True
    sections = ['ops'] * 3 + ['backbones'] * 3 + ['attention'] * 6 + ['compile']
    assert [r['section'] for r in report['rows']] == sections
    rows = _rows_of(report)
    assert {'nms', 'batched_nms', 'RoIAlign'} <= set(rows)
    fp32 = rows['NomMer-T fp32']
    assert fp32['logits_rel'] == 0 and fp32['grads_rel'] == 0
    for dtype in ('bf16', 'fp16'):
        row = rows[f'NomMer-T {dtype}']
        assert row['ok'] and 0 < row['logits_rel'] and row['nominations_agree'] > 0.9
    # every attention layer's calls, by backend; in inference the CPU's
    # flash kernel for all (training with a learned bias mask is MATH here)
    for name, layers in [
        ('NomMer-T', {'LocalWindowContext', 'MultiheadSelfAttention'}),
        ('GC ViT-T', {'WindowMSA', 'GlobalQueryWindowMSA'}),
        ('Visformer-S', {'ConvAttention'}),
    ]:
        for mode in ('training', 'inference'):
            row = rows[f'{name} bf16 {mode}']
            assert set(row['backends']) == layers, row
            counts = [n for b in row['backends'].values() for n in b.values()]
            assert sum(counts) == row['calls'] > 0
        assert rows[f'{name} bf16 inference']['math_calls'] == 0
    row = rows['NomMer-T bf16 batch 2']
    assert 0 < row['logits_rel'] < gpu_check.TOLERANCES['bf16'][0], row


def _rows_of(report: dict) -> dict:
    return {r['name']: r for r in report['rows']}


@pytest.mark.slow
@no_gpu
@pytest.mark.parametrize('index, stem', [(0, 'cls'), (1, 'det'), (2, 'seg')])
def test_dist_metrics_equal_tools_test_on_the_same_checkpoint(
    gpu_check, tmp_path, monkeypatch, index, stem
):
    """Each of the dist section's runs (classification with SyncBN, Cascade
    Mask R-CNN, UperNet; dist_train.sh then dist_test.sh, one gloo process)
    reports exactly the metrics that tools/test.py computes in one process
    on the checkpoint it trained. The launchers run the check's own Python,
    not the first python3 on PATH (here one that fails)."""
    all_configs = gpu_check.dist_configs
    monkeypatch.setattr(
        gpu_check, 'dist_configs', lambda work: all_configs(work)[index : index + 1]
    )
    other = tmp_path / 'other-bin'
    other.mkdir()
    (other / 'python3').write_text('#!/bin/sh\necho "not this python" >&2\nexit 1\n')
    (other / 'python3').chmod(0o755)
    monkeypatch.setenv('PATH', f'{other}:{os.environ["PATH"]}')
    monkeypatch.delenv('PYTHON', raising=False)
    work, logs = tmp_path / 'work', tmp_path / 'logs'
    work.mkdir()
    logs.mkdir()
    report = gpu_check.Report(tmp_path / 'gpu_check.json', {'device': 'cpu'})
    gpu_check.check_dist('cpu', report, work, logs, timeout=900)
    (row,) = report.rows
    assert row['ok'] and row['backend'] == 'gloo', row
    assert not list(logs.iterdir())
    out = tmp_path / 'test.json'
    ckpt = work / stem / f'iter_{gpu_check.DIST_ITERS}.pth'
    proc = run_tool(
        [ROOT / 'tools/test.py', work / f'{stem}.py', ckpt]
        + ['--work-dir', tmp_path / 'test', '--out', out],
        cwd=work,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    expected = json.loads(out.read_text())
    assert row['metrics'] == expected, (row['metrics'], expected)
    name, value = row['metric'].split('=')
    assert name in expected and float(value) == expected[name]


def _processes_naming(text: str) -> dict[int, str]:
    """Running processes whose command line contains ``text``, by id."""
    found = {}
    for cmdline in Path('/proc').glob('[0-9]*/cmdline'):
        try:
            line = cmdline.read_text().replace('\0', ' ')
        except OSError:
            continue  # gone meanwhile
        if text in line:
            found[int(cmdline.parent.name)] = line
    return found


def _kill_left(text: str) -> None:
    """SIGKILL, by id, what a failed run left (processes naming ``text``)."""
    for pid in _processes_naming(text):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
@no_gpu
def test_dist_runs_past_their_time_are_stopped(tmp_path):
    """--dist-timeout: each run that takes longer is stopped with its
    workers, reported as failed with the reason and its log kept, and the
    check goes on with the next run; exit status 1, the report complete."""
    try:
        proc = subprocess.run(
            [sys.executable, str(ROOT / 'tools/gpu_check.py'), '--allow-cpu']
            + ['--only', 'dist', '--dist-timeout', '2', '--out', str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
        report = json.loads((tmp_path / 'gpu_check.json').read_text())
        assert report['complete'] is True and report['failed'] == 3
        for row in report['rows']:
            assert row['error'] == 'train stopped after 2 s (--dist-timeout)', row
            assert Path(row['log']).parent == tmp_path
        assert len(list(tmp_path.glob('dist-*-failure.log'))) == 3
        # no process of the stopped runs is left (their configs lay in tmp_path)
        assert not _processes_naming(str(tmp_path))
    finally:
        _kill_left(str(tmp_path))


@pytest.mark.slow
@no_gpu
def test_stopped_by_sigterm_ends_its_dist_run(tmp_path):
    """A job's time limit sends gpu_check SIGTERM while a dist run goes on
    in a session of its own: the check exits 143 and no process of that run
    is left to hold the device; the report so far stays."""
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / 'tools/gpu_check.py'), '--allow-cpu']
        + ['--only', 'dist', '--out', str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.time() + 300
        # gpu_check names tmp_path itself; torchrun and its worker make three
        while len(_processes_naming(str(tmp_path))) < 3 and time.time() < deadline:
            time.sleep(0.2)
        assert len(_processes_naming(str(tmp_path))) >= 3, 'no dist run started'
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 128 + signal.SIGTERM, out[-3000:]
        assert 'gpu_check: stopped by SIGTERM' in out
        report = json.loads((tmp_path / 'gpu_check.json').read_text())
        assert report['complete'] is False
        deadline = time.time() + 10  # init reaps the orphans
        while _processes_naming(str(tmp_path)) and time.time() < deadline:
            time.sleep(0.1)
        assert not _processes_naming(str(tmp_path))
    finally:  # whatever a failed run left
        proc.kill()
        proc.wait()
        _kill_left(str(tmp_path))
