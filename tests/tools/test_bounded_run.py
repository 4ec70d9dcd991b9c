"""tools/bounded_run.py: a run past its time leaves no process behind."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from bounded_run import run_bounded
from cls_helpers import alive

ROOT = Path(__file__).resolve().parents[2]


def test_run_bounded_stops_every_process_it_started(tmp_path):
    """A run past its time (a hung NCCL rendezvous, say) is stopped with
    every process it started, even one that ignores SIGTERM, one that
    ``timeout`` moved into a group of its own, and one in a session of its
    own (as torchrun starts its workers), and one whose parent has exited
    (no longer its descendant, still in its session); its output so far
    comes back. (Stopping only the shell would hang: its children keep the
    output pipe open; stopping only its group misses the last three.)"""
    assert run_bounded(['bash', '-c', 'echo done; exit 3'], 30) == (3, 'done\n', '')
    pids = tmp_path / 'pids'
    script = (
        f'sleep 600 & echo $! >> {pids}; '
        f'bash -c \'trap "" TERM; echo $$ >> {pids}; '
        f"sleep 600 & echo $! >> {pids}; wait' & "
        f"timeout 600 bash -c 'echo $$ >> {pids}; exec sleep 600' & "
        f"setsid bash -c 'echo $$ >> {pids}; exec sleep 600' & "
        f'(sleep 600 & echo $! >> {pids}); '
        f'while [ $(wc -l < {pids}) -lt 6 ]; do sleep 0.05; done; '
        'echo started; wait'
    )
    call = (
        'import json, sys; sys.path.insert(0, "tools"); '
        'from bounded_run import run_bounded; '
        f'print(json.dumps(run_bounded(["bash", "-c", {script!r}], 2, grace=1)))'
    )
    try:
        proc = subprocess.run(
            [sys.executable, '-c', call],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,  # a hang is a failure too
        )
        assert proc.returncode == 0, proc.stderr
        rc, out, err = json.loads(proc.stdout)
        assert rc is None and out == 'started\n' and err == ''
        children = [int(p) for p in pids.read_text().split()]
        assert len(children) == 6
        deadline = time.time() + 10  # init reaps the orphans
        while any(map(alive, children)) and time.time() < deadline:
            time.sleep(0.1)
        assert not any(map(alive, children))
    finally:  # whatever a failed run left
        for pid in pids.read_text().split() if pids.exists() else []:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
