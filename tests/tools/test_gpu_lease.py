"""tools/gpu_lease.py: issue 13's GPU work within a lease's time. Its parts
need a GPU; here its commands are checked and its scheduling is run with
stand-in parts (short Python commands)."""

import json
import os
import shlex
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from cls_helpers import alive, load_tool

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope='module')
def tool():
    return load_tool('tools/gpu_lease.py')


def _part(tool, name, code, limit=30, **kw):
    """A stand-in part that runs Python ``code``."""
    return tool.Part(name, limit, [sys.executable, '-c', code], **kw)


def test_skips_without_a_gpu():
    proc = subprocess.run(
        [sys.executable, str(ROOT / 'tools/gpu_lease.py'), '--out', 'unused'],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    if 'skipped' not in proc.stdout:
        pytest.skip('a GPU is present: tools/gpu_lease.py runs for real')
    assert proc.returncode == 0
    assert not (ROOT / 'unused').exists()


def test_parts_are_valid_commands(tool, tmp_path):
    """Every part's command parses with its tool's own parser or dry run, so
    that a lease is not spent on a typo; the order puts first what issue
    13's targets rest on."""
    gpu_check = load_tool('tools/gpu_check.py')
    parts = tool.lease_parts(tmp_path, sys.executable)
    names = [p.name for p in parts]
    assert names[:5] == ['install', 'check', 't128', 'cascade', 'late']
    assert len(set(names)) == len(names)
    sections = set()
    for part in parts:
        argv = part.argv
        if part.name == 'install':
            # README's offline command for a machine with this checkout
            assert argv[1:] == shlex.split(
                'tools/install_deps.py --wheelhouse wheelhouse --offline'
            )
            assert part.skip_if is not None
        elif argv[1] == 'tools/gpu_check.py':
            args = gpu_check.make_parser().parse_args(argv[2:])
            assert args.out.parent == tmp_path
            sections.update(args.only)
        else:
            assert argv[:2] == ['bash', 'tools/gpu_figures.sh']
            assert Path(argv[2]) == tmp_path / 'figures'
            dry = subprocess.run(
                ['bash', *argv[1:2], '--dry-run', *argv[2:]],
                capture_output=True,
                text=True,
                cwd=ROOT,
                env={**os.environ, **part.env},
            )
            assert dry.returncode == 0 and dry.stdout, (part.name, dry.stderr)
            assert dry.stdout.split()[0] == sys.executable
            # the benchmarks' bounds (compile's twice STEP_LIMIT, cascade's
            # two benchmarks) fit the part's
            shares = 2 if part.name in ('cascade', 'compile') else 1
            assert float(part.env['STEP_LIMIT']) * shares <= part.limit
    assert sections == {'ops', 'backbones', 'attention', 'dist', 'compile'}
    # the dry run of the tool itself lists them all, in order
    proc = subprocess.run(
        [sys.executable, str(ROOT / 'tools/gpu_lease.py'), '--dry-run'],
        capture_output=True,
        text=True,
    )
    assert [ln.split()[0] for ln in proc.stdout.splitlines()] == names


def test_parts_run_within_the_budget_and_resume(tool, tmp_path, monkeypatch):
    """Outcomes ok, exit N, timeout (the part's own limit), cut (the
    budget's), present (its skip_if succeeded: not run), error (its command
    could not start; the next part still runs); a part with too
    little time left is not started. Run again, only the cut and the not
    started parts run, and a cut part's processes are gone."""
    monkeypatch.setattr(tool, 'MIN_START', 2)
    monkeypatch.setattr(tool, 'RESERVE', 0)
    ran = tmp_path / 'ran'
    marker = tmp_path / 'second-time'

    def code(name, then=''):
        return f'open({str(ran)!r}, "a").write({name!r} + " "); ' + then

    slow = (
        f'import os, time\nif os.path.exists({str(marker)!r}): raise SystemExit(0)\n'
        f'open({str(marker)!r}, "w").write(str(os.getpid()))\ntime.sleep(600)'
    )
    parts = [
        _part(tool, 'ok', code('ok', 'print("fine")')),
        _part(tool, 'fails', code('fails', 'raise SystemExit(3)')),
        _part(tool, 'hangs', code('hangs', 'import time; time.sleep(600)'), limit=1),
        _part(tool, 'here', code('here'), skip_if=[sys.executable, '-c', '']),
        tool.Part('absent', 30, [str(tmp_path / 'no-such-program')]),
        _part(tool, 'cut', code('cut', slow), limit=300),
        _part(tool, 'late', code('late')),
    ]
    state_dir = tmp_path / 'state'
    start = time.time()
    state = tool.run_parts(parts, state_dir, deadline=start + 8)
    outcomes = {n: s['outcome'] for n, s in state.items()}
    assert outcomes.pop('absent').startswith('error: [Errno 2] No such file')
    assert outcomes == {
        'ok': 'ok',
        'fails': 'exit 3',
        'hangs': 'timeout',
        'here': 'present',
        'cut': 'cut',
    }
    assert time.time() - start < 20
    assert ran.read_text().split() == ['ok', 'fails', 'hangs', 'cut']
    assert (state_dir / 'ok.log').read_text() == 'fine\n'
    assert json.loads((state_dir / 'state.json').read_text()) == state
    assert not alive(int(marker.read_text()))  # the cut part's process
    state = tool.run_parts(parts, state_dir, deadline=time.time() + 30)
    assert ran.read_text().split() == ['ok', 'fails', 'hangs', 'cut', 'cut', 'late']
    assert state['cut']['outcome'] == 'ok' and state['late']['outcome'] == 'ok'
    # named parts run again whatever their outcome
    tool.run_parts(parts, state_dir, time.time() + 30, named=['fails'])
    assert ran.read_text().split()[-1] == 'fails'


def test_lease_writes_its_files_also_when_stopped(tool, tmp_path):
    """SIGTERM (the lease's limit from outside) ends the running part with
    its processes (gpu_figures.sh's ``timeout`` puts them in a group of
    their own), marks it cut, and the output folder is still written:
    lease.md with every part's row, the tarball of the logs, at most the
    few files a lease brings back; the exit status is 143."""
    pids = tmp_path / 'pids'
    hang = tmp_path / 'hang.py'
    hang.write_text(
        f'import os, time\nopen({str(pids)!r}, "a").write(str(os.getpid()))\n'
        'time.sleep(600)\n'
    )
    # as in gpu_figures.sh: a shell, and timeout's own group under it
    hang_cmd = f'timeout 600 {sys.executable} {hang}; echo'
    script = f"""
import sys
from pathlib import Path
sys.path.insert(0, {str(ROOT / 'tests')!r})
from cls_helpers import alive, load_tool
tool = load_tool('tools/gpu_lease.py')
parts = [
    tool.Part('first', 30, [sys.executable, '-c', 'print("measured")']),
    tool.Part('hangs', 300, ['bash', '-c', {hang_cmd!r}]),
    tool.Part('never', 30, [sys.executable, '-c', '']),
]
state, out = Path({str(tmp_path / 'state')!r}), Path({str(tmp_path / 'out')!r})
sys.exit(tool.lease(parts, state, out, 400, None, 'GPU lease: test'))
"""
    proc = subprocess.Popen(
        [sys.executable, '-c', script],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
    )
    deadline = time.time() + 60
    while not pids.exists() and time.time() < deadline:
        time.sleep(0.1)
    try:
        assert pids.exists(), 'the hanging part did not start'
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143, out
    assert not alive(int(pids.read_text()))
    files = sorted(p.name for p in (tmp_path / 'out').iterdir())
    assert files == ['lease.md', 'lease.tar.gz']
    lease_md = (tmp_path / 'out' / 'lease.md').read_text()
    assert '| first | ok |' in lease_md and '| hangs | cut |' in lease_md
    assert '| never | not run |' in lease_md
    assert 'measured' in lease_md  # the last lines of each log
    with tarfile.open(tmp_path / 'out' / 'lease.tar.gz') as tar:
        assert set(tar.getnames()) == {'first.log', 'hangs.log', 'state.json'}
    assert '| hangs | cut |' in out  # the summary is printed too
