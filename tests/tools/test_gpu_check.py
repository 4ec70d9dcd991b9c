import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_check_skips_without_a_gpu():
    proc = subprocess.run(
        [sys.executable, str(ROOT / 'tools/gpu_check.py')],
        capture_output=True,
        text=True,
    )
    if 'skipped' not in proc.stdout:
        pytest.skip('a GPU is present: tools/gpu_check.py runs for real')
    assert proc.returncode == 0


def _gpu_check_on_cpu(out, *only_and_options, env=None):
    """tools/gpu_check.py --allow-cpu --only ...: its output and report,
    which must have no failed check."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / 'tools/gpu_check.py'), '--allow-cpu']
        + ['--only', *only_and_options, '--out', str(out)],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / 'gpu_check.json').read_text())
    assert report['failed'] == 0
    return proc, report


def test_gpu_check_harness_runs_on_the_cpu(tmp_path):
    """The GPU check's harness with --allow-cpu (the device is the CPU):
    mmcv's ops against themselves, NomMer-T under fp32, bf16 and fp16
    autocast against fp32 on the same weights, the attention kernels of the
    three transformers, torch.compile of NomMer-T, the report file. On one
    device the fp32 comparison must be exact: same weights, same input and,
    replayed, the same nominations."""
    import torch

    if torch.cuda.is_available():
        pytest.skip('a GPU is present: tools/gpu_check.py compares it with the CPU')
    proc, report = _gpu_check_on_cpu(
        tmp_path, 'ops', 'backbones', 'attention', 'compile',
        '--models', 'NomMer-T', '--size', '64', '--batch', '2',
    )  # fmt: skip
    # the report is readable in a lease's short output tail: no line per
    # parameter from init_weights
    assert len((proc.stdout + proc.stderr).splitlines()) < 60, proc.stdout[-2000:]
    assert report['complete'] is True
    assert set(report['section_seconds']) == {
        'ops',
        'backbones',
        'attention',
        'compile',
    }
    rows = {r['name']: r for r in report['rows']}
    assert {'nms', 'batched_nms', 'RoIAlign forward/backward'} <= set(rows)
    fp32 = rows['NomMer-T fp32']
    assert fp32['logits_rel'] == 0 and fp32['grads_rel'] == 0
    assert fp32['nominations_agree'] == 1
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
            counts = [
                n for backends in row['backends'].values() for n in backends.values()
            ]
            assert sum(counts) == row['calls'] > 0
        row = rows[f'{name} bf16 inference']
        assert row['math_calls'] == 0, row
    # inductor's CPU code: one graph, its output near eager's, timed
    row = rows['NomMer-T bf16 batch 2']
    assert row['graph_breaks'] == 0 and row['logits_rel'] < 6e-2, row
    assert row['compile_s'] > 0 and row['speedup'] > 0, row
    assert 0.9 < row['nominations_agree'] <= 1, row


def test_gpu_check_report_is_rewritten_after_every_row(tmp_path):
    """gpu_check.json is current after each check, marked incomplete until
    the end, so that a run stopped from outside (a lease's time limit)
    still leaves what it measured; never a half-written file."""
    from cls_helpers import load_tool

    gpu_check = load_tool('tools/gpu_check.py')
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
    report.section_seconds['ops'] = 1.5
    report.write(complete=True)
    assert read()['complete'] is True and read()['section_seconds'] == {'ops': 1.5}
    assert read()['environment'] == {'device': 'cpu'}
    assert [p.name for p in tmp_path.iterdir()] == ['gpu_check.json']


def test_gpu_check_goes_on_after_a_model_that_raises(tmp_path, monkeypatch):
    """A model whose check raises (out of memory, say) gets a failed row
    naming the error; the models after it are still checked."""
    import torch
    from cls_helpers import load_tool

    gpu_check = load_tool('tools/gpu_check.py')
    build = gpu_check.build_classifier

    def build_or_fail(config):
        if 'gcvit' in config:
            raise torch.OutOfMemoryError('out of memory (simulated)')
        return build(config)

    monkeypatch.setattr(gpu_check, 'build_classifier', build_or_fail)
    report = gpu_check.Report(tmp_path / 'gpu_check.json', {'device': 'cpu'})
    gpu_check.check_attention('cpu', report, 64, 2)
    gpu_check.check_backbones('cpu', report, 64, 2, ['GC ViT-T', 'Visformer-S'])
    assert [(r['section'], r['name']) for r in report.rows] == [
        ('attention', 'NomMer-T bf16 training'),
        ('attention', 'NomMer-T bf16 inference'),
        ('attention', 'GC ViT-T raised'),
        ('attention', 'Visformer-S bf16 training'),
        ('attention', 'Visformer-S bf16 inference'),
        ('backbones', 'GC ViT-T raised'),
        ('backbones', 'Visformer-S fp32'),
        ('backbones', 'Visformer-S bf16'),
        ('backbones', 'Visformer-S fp16'),
    ]
    for row in report.rows:
        raised = row['name'] == 'GC ViT-T raised'
        assert row['ok'] is not raised, row
        assert raised == ('out of memory (simulated)' in row.get('error', ''))


def test_gpu_check_fp32_bound_follows_the_cpus_own_rounding():
    """Beyond the fixed fp32 tolerance a figure passes within ROUNDING times
    the CPU fp32's own distance from fp64 (at 224, batch 4, CoTNet-50's CPU
    fp32 gradients are 2.6e-3 from fp64, beyond the fixed 1e-3, so a right
    GPU would fail it); each figure is held to its own bound."""
    from cls_helpers import load_tool

    gpu_check = load_tool('tools/gpu_check.py')
    tol_logits, tol_grads = gpu_check.TOLERANCES['fp32']
    step = gpu_check.ROUNDING
    assert gpu_check.within_fp32_rounding(tol_logits, tol_grads, (0.0, 0.0))
    assert not gpu_check.within_fp32_rounding(tol_logits, 3 * tol_grads, (0, 0))
    assert gpu_check.within_fp32_rounding(
        tol_logits, 3 * tol_grads, (0.0, 3 * tol_grads / step)
    )
    assert not gpu_check.within_fp32_rounding(
        tol_logits, 3 * tol_grads, (0.0, 2 * tol_grads / step)
    )
    # the gradients' distance does not widen the logits' bound
    assert not gpu_check.within_fp32_rounding(3 * tol_logits, tol_grads, (0, 1))


def test_gpu_check_fp32_bound_runs_on_a_real_model(tmp_path, monkeypatch):
    """The path a GPU takes when an fp32 figure is beyond its tolerance, on
    the CPU: with the tolerances made negative even the exact one-device
    comparison is beyond them, so NomMer-T's fp32 row measures the CPU
    fp32's distance from fp64 (nominations replayed) and passes within it."""
    from cls_helpers import load_tool

    gpu_check = load_tool('tools/gpu_check.py')
    monkeypatch.setitem(gpu_check.TOLERANCES, 'fp32', (-1.0, -1.0))
    report = gpu_check.Report(tmp_path / 'gpu_check.json', {'device': 'cpu'})
    gpu_check.check_backbones('cpu', report, 64, 2, ['NomMer-T'])
    row = {r['name']: r for r in report.rows}['NomMer-T fp32']
    assert row['ok'] and row['logits_rel'] == 0 and row['grads_rel'] == 0, row
    # fp64 is another computation: a small distance, not none
    assert 0 < row['cpu_fp32_vs_fp64_logits'] < 1e-5, row
    assert 0 < row['cpu_fp32_vs_fp64_grads'] < 1e-4, row


def test_gpu_check_focal_loss_reference_is_mmdets():
    """The CUDA-only focal loss check compares mmcv's kernel with a formula;
    the formula agrees with mmdet's own PyTorch focal loss, value and
    gradient."""
    import torch
    from cls_helpers import load_tool
    from mmdet.models.losses.focal_loss import py_sigmoid_focal_loss

    gpu_check = load_tool('tools/gpu_check.py')
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 5, generator=g, dtype=torch.float64) * 3
    target = torch.randint(0, 5, (64,), generator=g)
    ours = logits.clone().requires_grad_()
    theirs = logits.clone().requires_grad_()
    loss = gpu_check.focal_loss_reference(ours, target)
    expected = py_sigmoid_focal_loss(
        theirs,
        torch.nn.functional.one_hot(target, 5).double(),
        gamma=2.0,
        alpha=0.25,
        reduction='sum',
    )
    loss.backward()
    expected.backward()
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(ours.grad, theirs.grad)


def test_run_bounded_stops_every_process_it_started(tmp_path):
    """A run past its time (a hung NCCL rendezvous, say) is stopped with
    every process it started, even one that ignores SIGTERM, one that
    ``timeout`` moved into a group of its own, and one in a session of its
    own (as torchrun starts its workers), and its output so far comes back.
    (Stopping only the shell would hang: its children keep the output pipe
    open; stopping only its group missed the last two, and the call then
    waited for them.)"""
    import signal

    from cls_helpers import alive, load_tool

    gpu_check = load_tool('tools/gpu_check.py')
    assert gpu_check.run_bounded(['bash', '-c', 'echo done; exit 3'], 30) == (
        3,
        'done\n',
    )
    pids = tmp_path / 'pids'
    script = (
        f'sleep 600 & echo $! >> {pids}; '
        f'bash -c \'trap "" TERM; echo $$ >> {pids}; '
        f"sleep 600 & echo $! >> {pids}; wait' & "
        f"timeout 600 bash -c 'echo $$ >> {pids}; exec sleep 600' & "
        f"setsid bash -c 'echo $$ >> {pids}; exec sleep 600' & "
        f'while [ $(wc -l < {pids}) -lt 5 ]; do sleep 0.05; done; '
        'echo started; wait'
    )
    call = (
        'import json, sys; sys.path.insert(0, "tests"); '
        'from cls_helpers import load_tool; '
        'run_bounded = load_tool("tools/gpu_check.py").run_bounded; '
        f'print(json.dumps(run_bounded(["bash", "-c", {script!r}], 2, grace=1)))'
    )
    try:
        proc = subprocess.run(
            [sys.executable, '-c', call],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,  # a hang is a failure too
        )
        assert proc.returncode == 0, proc.stderr
        rc, out = json.loads(proc.stdout)
        assert rc is None and out == 'started\n'
        children = [int(p) for p in pids.read_text().split()]
        assert len(children) == 5
        deadline = time.time() + 10  # init reaps the orphans
        while any(map(alive, children)) and time.time() < deadline:
            time.sleep(0.1)
        assert not any(map(alive, children))
    finally:  # whatever a failed run left
        for pid in pids.read_text().split() if pids.exists() else []:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)


def test_gpu_check_dist_runs_on_the_cpu(tmp_path):
    """gpu_check's dist section with --allow-cpu: its three small configs
    (classification with sync_bn, Cascade Mask R-CNN, UperNet) train and
    test through dist_train.sh / dist_test.sh in one gloo process, so that
    a GPU lease is not spent on a broken config (the classification one
    once was: sync_bn on CPU). The launchers run the check's own Python,
    not the first python3 on PATH (here one that fails)."""
    import torch

    if torch.cuda.is_available():
        pytest.skip('a GPU is present: tools/gpu_check.py runs it with NCCL')
    other = tmp_path / 'other-bin'
    other.mkdir()
    (other / 'python3').write_text('#!/bin/sh\necho "not this python" >&2\nexit 1\n')
    (other / 'python3').chmod(0o755)
    env = dict(os.environ, PATH=f'{other}:{os.environ["PATH"]}')
    env.pop('PYTHON', None)
    _, report = _gpu_check_on_cpu(tmp_path, 'dist', env=env)
    assert len(report['rows']) == 3
    for row, metric in zip(report['rows'], ('accuracy/top1', 'coco/bbox_mAP', 'mIoU')):
        name, value = row['metric'].split('=')
        assert name == metric and float(value) >= 0, row
        assert row['backend'] == 'gloo'
    assert not list(tmp_path.glob('*-failure.log'))


def test_gpu_check_dist_runs_past_their_time_are_stopped(tmp_path):
    """--dist-timeout: each run that takes longer is stopped with its
    workers, reported as failed with the reason and its log kept, and the
    check goes on with the next run; the report is complete."""
    import torch

    if torch.cuda.is_available():
        pytest.skip('a GPU is present: tools/gpu_check.py runs it with NCCL')
    proc = subprocess.run(
        [sys.executable, str(ROOT / 'tools/gpu_check.py'), '--allow-cpu']
        + ['--only', 'dist', '--dist-timeout', '2', '--out', str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / 'gpu_check.json').read_text())
    assert report['complete'] is True and report['failed'] == 3
    assert set(report['section_seconds']) == {'dist'}
    for row in report['rows']:
        assert row['error'] == 'train stopped after 2 s (--dist-timeout)', row
        assert Path(row['log']).parent == tmp_path
    assert len(list(tmp_path.glob('dist-*-failure.log'))) == 3
    # no process of the stopped runs is left (their configs lay in tmp_path)
    left = _processes_naming(str(tmp_path))
    assert not left, left


def _processes_naming(text: str) -> list[str]:
    """Command lines of the running processes that contain ``text``."""
    found = []
    for cmdline in Path('/proc').glob('[0-9]*/cmdline'):
        try:
            line = cmdline.read_text().replace('\0', ' ')
        except OSError:
            continue  # gone meanwhile
        if text in line:
            found.append(line)
    return found


def test_gpu_check_stopped_by_sigterm_ends_its_dist_run(tmp_path):
    """A job's time limit (a GPU lease, SLURM) sends gpu_check SIGTERM while
    a dist run goes on in a session of its own: the check exits 143 and no
    process of that run is left to hold the GPU; the report so far stays."""
    import signal

    import torch

    if torch.cuda.is_available():
        pytest.skip('a GPU is present: tools/gpu_check.py runs it with NCCL')
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / 'tools/gpu_check.py'), '--allow-cpu']
        + ['--only', 'dist', '--out', str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.time() + 120
        # gpu_check names tmp_path itself; torchrun and its worker make three
        while len(_processes_naming(str(tmp_path))) < 3 and time.time() < deadline:
            time.sleep(0.2)
        assert len(_processes_naming(str(tmp_path))) >= 3, 'no dist run started'
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
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
        subprocess.run(['pkill', '-KILL', '-f', str(tmp_path)], check=False)
