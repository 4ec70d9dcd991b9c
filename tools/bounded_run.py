"""Run a command with a time limit and leave none of its processes behind.

torchrun starts each worker in a session of its own, so neither killing
the launcher nor its process group stops a hung distributed run; this
stops the command's whole family: its session, and the descendants of
every process in it, found through /proc.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path


def run_bounded(
    cmd: list[str], timeout: float, grace: float = 15, **popen_kwargs
) -> tuple[int | None, str, str | None]:
    """(Exit status, stdout, stderr) of ``cmd``, run in a session of its own
    with its output captured as text (``stderr=subprocess.STDOUT`` merges
    the two; stderr is then None). Past ``timeout`` seconds every process it
    started gets SIGTERM (torchrun passes it on to its workers), SIGKILL
    ``grace`` seconds later, and the status is None. No process it started
    outlives the call, also when the caller is stopped by an exception
    (SIGTERM made SystemExit, say)."""
    popen_kwargs = dict(stdout=subprocess.PIPE, stderr=subprocess.PIPE) | popen_kwargs
    proc = subprocess.Popen(cmd, text=True, start_new_session=True, **popen_kwargs)
    family: set[int] = set()
    try:
        out, err = proc.communicate(timeout=timeout)
        return proc.returncode, out, err
    except subprocess.TimeoutExpired:
        family = _family(proc.pid)
        _signal_all(family, signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=grace)
        except subprocess.TimeoutExpired:
            family |= _family(proc.pid)
            _signal_all(family, signal.SIGKILL)
            out, err = proc.communicate()
        return None, out, err
    finally:
        left = family | _family(proc.pid)
        if proc.returncode is not None:
            left.discard(proc.pid)  # reaped: the number may be another's now
        _signal_all(left, signal.SIGKILL)


def _family(pid: int) -> set[int]:
    """``pid``, its descendants and its session's processes, from /proc."""
    parents, family = {}, {pid}
    for stat in Path('/proc').glob('[0-9]*/stat'):
        with contextlib.suppress(OSError):  # gone meanwhile
            # after the name in parentheses: state, ppid, pgrp, session
            fields = stat.read_text().rsplit(')', 1)[1].split()
            parents[int(stat.parent.name)] = int(fields[1])
            if int(fields[3]) == pid:
                family.add(int(stat.parent.name))
    while found := {c for c, p in parents.items() if p in family} - family:
        family |= found
    return family


def _signal_all(pids: set[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):  # gone
            os.kill(pid, sig)
