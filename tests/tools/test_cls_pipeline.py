"""Classification end to end: 2-process gloo training and evaluation
through tools/dist_train.sh and tools/dist_test.sh, kill-and-resume."""

import json

import pytest
import torch

from cls_helpers import (
    ROOT,
    check_curves,
    failure_report,
    free_port,
    run_tool,
    world_size,
    write_config,
)
from demo_data import make_imagenet_layout

pytestmark = pytest.mark.slow  # torchrun and tool processes


@pytest.fixture(scope='module')
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp('shapes')
    return make_imagenet_layout(root, {'train': 6, 'val': 3}, size=32)


def test_distributed_train_then_test(shapes, tmp_path):
    # sync_bn as a GPU recipe would set it: on CPU the BN layers stay plain
    cfg = write_config(tmp_path / 'cfg.py', shapes, iters=4, extra="sync_bn = 'torch'")
    work = tmp_path / 'work'
    train = run_tool(
        [ROOT / 'tools/dist_train.sh', cfg, 2, '--work-dir', work],
        cwd=tmp_path,
    )
    log = train.stdout + train.stderr
    assert train.returncode == 0, failure_report(train)
    assert world_size(log) == 2
    assert 'Iter(train) [4/4]' in log
    assert "sync_bn='torch' needs CUDA" in log
    ckpt = work / 'iter_4.pth'
    assert ckpt.exists()
    said = check_curves(work, ['loss', 'lr', 'accuracy/top1'], tmp_path / 'curves.png')
    assert 'loss: 4 points' in said  # one per iteration
    assert 'accuracy/top1: 1 points' in said and 'at iteration 4' in said

    # 11 of the 12 held-out images: two ranks get 6 each, the sampler
    # repeating one to pad; the repeat must not be counted
    subset = ['--cfg-options', 'test_dataloader.dataset.indices=11']
    out, dump = tmp_path / 'metrics.json', tmp_path / 'predictions.pkl'
    test = run_tool(
        [ROOT / 'tools/dist_test.sh', cfg, ckpt, 2, '--work-dir', work]
        + ['--out', out, '--dump', dump, *subset],
        cwd=tmp_path,
    )
    assert test.returncode == 0, failure_report(test)
    assert world_size(test.stdout + test.stderr) == 2
    metrics = json.loads(out.read_text())
    assert 'accuracy/top1' in test.stdout + test.stderr
    images = {str(p) for p in shapes.glob('val/*/*.png')}
    assert len(images) == 12
    preds = _predictions(dump)  # each image once
    assert len(preds) == 11 and set(preds) <= images
    # mmpretrain's top-1 is the share of those predictions that are right
    right = sum(label == truth for label, truth in preds.values())
    assert metrics['accuracy/top1'] == pytest.approx(100.0 * right / 11)

    # one process over the same images: the same predictions and metrics
    out1, dump1 = tmp_path / 'metrics1.json', tmp_path / 'predictions1.pkl'
    single = run_tool(
        [ROOT / 'tools/test.py', cfg, ckpt, '--work-dir', tmp_path / 'single']
        + ['--out', out1, '--dump', dump1, *subset],
        cwd=tmp_path,
    )
    assert single.returncode == 0, failure_report(single)
    assert json.loads(out1.read_text()) == metrics
    assert _predictions(dump1) == preds


def _predictions(path) -> dict:
    """{image path: (predicted label, true label)} from a --dump file (our
    own test output, so unpickling it is safe)."""
    import pickle

    with open(path, 'rb') as f:
        samples = pickle.load(f)
    out = {}
    for s in samples:
        assert s['img_path'] not in out, f'{s["img_path"]} evaluated twice'
        out[s['img_path']] = (int(s['pred_label']), int(s['gt_label']))
    return out


def test_kill_and_resume_equals_uninterrupted(shapes, tmp_path):
    iters = 6
    hooks = "custom_hooks = [dict(type='RNGStateHook')]\n"
    full = write_config(
        tmp_path / 'full.py', shapes, iters, hooks, ckpt_interval=iters // 2
    )
    killed = write_config(
        tmp_path / 'killed.py',
        shapes,
        iters,
        "custom_imports = dict(imports=['nommer_mm', 'kill_hook'])\n"
        "custom_hooks = [dict(type='RNGStateHook'), "
        f"dict(type='KillAtIterHook', at={iters // 2})]\n",
        ckpt_interval=iters // 2,
    )

    a = run_tool(
        [ROOT / 'tools/train.py', full, '--work-dir', tmp_path / 'a'], cwd=tmp_path
    )
    assert a.returncode == 0, (a.stdout + a.stderr)[-3000:]
    b = run_tool(
        [ROOT / 'tools/train.py', killed, '--work-dir', tmp_path / 'b'], cwd=tmp_path
    )
    assert b.returncode == 17, (b.stdout + b.stderr)[-3000:]  # killed
    assert (tmp_path / 'b' / f'iter_{iters // 2}.pth').exists()
    assert not (tmp_path / 'b' / f'iter_{iters}.pth').exists()
    # resume with the plain config (no kill hook) from the latest checkpoint
    c = run_tool(
        [ROOT / 'tools/train.py', full, '--work-dir', tmp_path / 'b', '--resume'],
        cwd=tmp_path,
    )
    log = c.stdout + c.stderr
    assert c.returncode == 0, log[-3000:]
    assert (
        f'resumed epoch: 0, iter: {iters // 2}' in log.lower()
        or 'Advance dataloader' in log
    )

    wa = torch.load(tmp_path / 'a' / f'iter_{iters}.pth')['state_dict']
    wb = torch.load(tmp_path / 'b' / f'iter_{iters}.pth')['state_dict']
    assert wa.keys() == wb.keys()
    diff = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not diff, diff[:5]
    # and training did change the weights
    w0 = torch.load(tmp_path / 'a' / f'iter_{iters // 2}.pth')['state_dict']
    assert any(not torch.equal(wa[k], w0[k]) for k in wa)


def test_a_stopped_rank_ends_the_run_within_the_timeout(shapes, tmp_path):
    """Rank 1 stops answering (SIGSTOP) after iteration 2; with
    env_cfg.dist_cfg.timeout=15 rank 0 gives up after ~15 s and names it
    (before: gloo's 30-minute default, whatever the config said)."""
    import os
    import signal
    import time

    timeout, pid_file = 15, tmp_path / 'stopped.pid'
    cfg = write_config(
        tmp_path / 'cfg.py',
        shapes,
        iters=6,
        extra="custom_imports = dict(imports=['nommer_mm', 'kill_hook'])\n"
        "custom_hooks = [dict(type='StopRankHook', rank=1, at=2, "
        f'pid_file={str(pid_file)!r})]\n'
        f'env_cfg = dict(dist_cfg=dict(timeout={timeout}))\n',
    )
    start = time.monotonic()
    try:
        run = run_tool(
            [ROOT / 'tools/dist_train.sh', cfg, 2, '--work-dir', tmp_path / 'work'],
            cwd=tmp_path,
            timeout=timeout + 300,
        )
    finally:
        if pid_file.exists():  # torchrun should have killed it already
            try:
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
            except ProcessLookupError:
                pass
    elapsed = time.monotonic() - start
    log = run.stdout + run.stderr
    assert run.returncode != 0, log[-3000:]
    assert 'rank 1 (last heard' in log and 'stopped answering' in log, failure_report(
        run
    )
    assert f'timeout = {timeout} s' in log
    # start-up, the timeout, and torchrun's 30 s grace before SIGKILL
    assert elapsed < timeout + 150, elapsed


def _two_nodes(cfg, ckpt, tmp_path, port, *extra):
    """tools/dist_test.sh as two 'nodes' (one process each) that share no
    working directory; (exit status, output) of each, the status None for
    a node stopped after 300 s with all its processes."""
    import os
    import subprocess
    from concurrent.futures import ThreadPoolExecutor

    from bounded_run import run_bounded  # tools/

    env = dict(
        os.environ,
        NNODES='2',
        PORT=str(port),
        PYTHONPATH=os.pathsep.join(
            [str(ROOT), str(ROOT / 'tests'), os.environ.get('PYTHONPATH', '')]
        ),
    )

    def node(rank: int) -> tuple[int | None, str]:
        work = tmp_path / f'node{rank}'
        work.mkdir(exist_ok=True)
        cmd = ['bash', str(ROOT / 'tools/dist_test.sh'), str(cfg), str(ckpt), '1']
        cmd += ['--work-dir', str(work / 'work'), '--out', str(work / 'metrics.json')]
        rc, out, _ = run_bounded(
            [*cmd, *extra],
            300,
            cwd=work,
            env=dict(env, NODE_RANK=str(rank)),
            stderr=subprocess.STDOUT,
        )
        return rc, out

    with ThreadPoolExecutor(2) as pool:  # both nodes at once: they rendezvous
        return list(pool.map(node, (0, 1)))


def test_two_nodes_without_a_shared_file_system(shapes, tmp_path):
    """Our configs gather evaluation results through the process group:
    two nodes in separate directories give the single-process metrics.
    mmengine's default (a temporary directory under the working directory,
    collect_device='cpu') fails there, which shows the two are apart."""
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmpretrain.registry import MODELS

    cfg = write_config(tmp_path / 'cfg.py', shapes, iters=2)
    init_default_scope('mmpretrain')
    torch.manual_seed(0)
    model = MODELS.build(Config.fromfile(str(cfg)).model)
    ckpt = tmp_path / 'model.pth'
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, ckpt)

    single = run_tool(
        [
            ROOT / 'tools/test.py',
            cfg,
            ckpt,
            '--work-dir',
            tmp_path / 'single',
            '--out',
            tmp_path / 'single.json',
        ],
        cwd=tmp_path,
    )
    assert single.returncode == 0, failure_report(single)
    expect = json.loads((tmp_path / 'single.json').read_text())

    (rc0, out0), (rc1, out1) = _two_nodes(cfg, ckpt, tmp_path, free_port())
    assert rc0 == 0 and rc1 == 0, (out0[-3000:], out1[-3000:])
    got = json.loads((tmp_path / 'node0/metrics.json').read_text())
    assert got == expect  # every held-out image counted once, same result

    (rc0, out0), (rc1, out1) = _two_nodes(
        cfg,
        ckpt,
        tmp_path,
        free_port(),
        '--cfg-options',
        'test_evaluator.collect_device=cpu',
    )
    assert rc0 != 0 or rc1 != 0, 'a shared-directory gather cannot work here'
