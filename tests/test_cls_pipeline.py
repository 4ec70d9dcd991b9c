"""Classification end to end: 2-process gloo training and evaluation
through tools/dist_train.sh and tools/dist_test.sh, kill-and-resume."""
import json

import pytest
import torch

from cls_helpers import ROOT, failure_report, run_tool, write_config
from nommer_mm.testing import make_imagenet_layout


@pytest.fixture(scope='module')
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp('shapes')
    return make_imagenet_layout(root, {'train': 6, 'val': 3}, size=32)


def test_distributed_train_then_test(shapes, tmp_path):
    cfg = write_config(tmp_path / 'cfg.py', shapes, iters=4)
    work = tmp_path / 'work'
    train = run_tool([ROOT / 'tools/dist_train.sh', cfg, 2, '--work-dir',
                      work], cwd=tmp_path, port=29611)
    log = train.stdout + train.stderr
    assert train.returncode == 0, failure_report(train)
    assert "'world_size': 2" in log or 'world_size: 2' in log \
        or 'Distributed launcher: pytorch' in log
    assert 'Iter(train) [4/4]' in log
    ckpt = work / 'iter_4.pth'
    assert ckpt.exists()

    out = tmp_path / 'metrics.json'
    test = run_tool([ROOT / 'tools/dist_test.sh', cfg, ckpt, 2, '--work-dir',
                     work, '--out', out], cwd=tmp_path, port=29612)
    assert test.returncode == 0, failure_report(test)
    metrics = json.loads(out.read_text())
    # mmpretrain's Accuracy over the 12 held-out images of both ranks
    assert 0.0 <= metrics['accuracy/top1'] <= 100.0
    assert 'accuracy/top1' in test.stdout + test.stderr


def test_kill_and_resume_equals_uninterrupted(shapes, tmp_path):
    iters = 6
    hooks = "custom_hooks = [dict(type='RNGStateHook')]\n"
    full = write_config(tmp_path / 'full.py', shapes, iters, hooks,
                        ckpt_interval=iters // 2)
    killed = write_config(
        tmp_path / 'killed.py', shapes, iters,
        "custom_imports = dict(imports=['nommer_mm', 'kill_hook'])\n"
        "custom_hooks = [dict(type='RNGStateHook'), "
        f"dict(type='KillAtIterHook', at={iters // 2})]\n",
        ckpt_interval=iters // 2)

    a = run_tool([ROOT / 'tools/train.py', full, '--work-dir', tmp_path / 'a'],
                 cwd=tmp_path)
    assert a.returncode == 0, (a.stdout + a.stderr)[-3000:]
    b = run_tool([ROOT / 'tools/train.py', killed, '--work-dir',
                  tmp_path / 'b'], cwd=tmp_path)
    assert b.returncode == 17, (b.stdout + b.stderr)[-3000:]  # killed
    assert (tmp_path / 'b' / f'iter_{iters // 2}.pth').exists()
    assert not (tmp_path / 'b' / f'iter_{iters}.pth').exists()
    # resume with the plain config (no kill hook) from the latest checkpoint
    c = run_tool([ROOT / 'tools/train.py', full, '--work-dir', tmp_path / 'b',
                  '--resume'], cwd=tmp_path)
    log = c.stdout + c.stderr
    assert c.returncode == 0, log[-3000:]
    assert f'resumed epoch: 0, iter: {iters // 2}' in log.lower() or \
        'Advance dataloader' in log

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
        tmp_path / 'cfg.py', shapes, iters=6,
        extra="custom_imports = dict(imports=['nommer_mm', 'kill_hook'])\n"
        "custom_hooks = [dict(type='StopRankHook', rank=1, at=2, "
        f"pid_file={str(pid_file)!r})]\n"
        f"env_cfg = dict(dist_cfg=dict(timeout={timeout}))\n")
    start = time.monotonic()
    try:
        run = run_tool([ROOT / 'tools/dist_train.sh', cfg, 2, '--work-dir',
                        tmp_path / 'work'], cwd=tmp_path, port=29613,
                       timeout=timeout + 300)
    finally:
        if pid_file.exists():  # torchrun should have killed it already
            try:
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
            except ProcessLookupError:
                pass
    elapsed = time.monotonic() - start
    log = run.stdout + run.stderr
    assert run.returncode != 0, log[-3000:]
    assert 'rank 1 (last heard' in log and 'stopped answering' in log, \
        failure_report(run)
    assert f'timeout = {timeout} s' in log
    # start-up, the timeout, and torchrun's 30 s grace before SIGKILL
    assert elapsed < timeout + 150, elapsed
