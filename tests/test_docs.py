"""The documentation against the repository: links, paths, tool options,
config coverage, figures, the README's two commands, and wording.

Documentation is README.md, CHANGELOG.md, the per-task READMEs
(configs/{cls,det,seg}/README.md) and docs/*.md.
"""

from __future__ import annotations

import ast
import importlib
import itertools
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
TASKS = ('cls', 'det', 'seg')
TASK_READMES = [ROOT / 'configs' / t / 'README.md' for t in TASKS]
DOCS = [ROOT / 'README.md', ROOT / 'CHANGELOG.md', *TASK_READMES] + sorted(
    (ROOT / 'docs').glob('*.md')
)
# Documentation a user reads as a description of the code (CHANGELOG is history).
DESCRIPTIONS = [d for d in DOCS if d.name != 'CHANGELOG.md']
README_MAX_LINES = 250

LINK = re.compile(r'(?<!!)\[[^\]]*\]\(([^)\s]+)\)')
PATH = re.compile(
    r'(?<![\w./:-])((?:configs|tools|docs|tests|nommer_mm)/[\w./{},*<>-]*)'
)
CODE_SPAN = re.compile(r'`([^`\n]+)`')
FENCE = re.compile(r'^```.*?^```', re.S | re.M)
TOOL_CALL = re.compile(r'(?:(?:python3?|bash)\s+)?(tools/[\w/]+\.(?:py|sh))\b(.*)')
FLAG = re.compile(r'(?<![\w-])(--[a-z][\w-]*)')
# Where a tool's options are defined besides the tool itself.
OPTION_SOURCES = {
    'tools/train.py': ['nommer_mm/launch.py'],
    'tools/test.py': ['nommer_mm/launch.py'],
    'tools/dist_train.sh': ['tools/train.py', 'nommer_mm/launch.py'],
    'tools/dist_test.sh': ['tools/test.py', 'nommer_mm/launch.py'],
    'tools/slurm_train.sh': ['tools/train.py', 'nommer_mm/launch.py'],
    'tools/slurm_test.sh': ['tools/test.py', 'nommer_mm/launch.py'],
    'tools/install_deps.py': ['tools/deps_installer'],
    'tools/run_tests.sh': [],
}
DEVELOPMENT_WORDS = re.compile(
    r'this machine|\bissues?\b|\bleases?\b|\bused to\b|\bearlier\b|'
    r'before this change|re-measured|rehearsal|fast[ _-]paths?|NOMMER_FAST|'
    r'onednn|gpu_lease|gpu_figures|--targets|--fast-vs-plain|'
    r'\d+ passed|\d+ tests\b',
    re.I,
)
# A speed or memory figure: only docs/benchmarks.md carries them.
SPEED_OR_MEMORY = re.compile(
    r'\d(?:[\d.,]*)\s*(?:img/s|images/s|MiB|GiB|GB\b|ms\b|s/iter|x faster)'
)


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def prose(text: str) -> str:
    """The text without fenced code blocks (headings inside them are not
    headings)."""
    return FENCE.sub('', text)


def slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    text = re.sub(r'\[([^\]]*)\]\([^)]*\)', r'\1', heading)  # links -> text
    text = re.sub(r'<[^>]+>', '', text).replace('`', '').strip().lower()
    text = re.sub(r'[^\w\- ]', '', text)
    return text.replace(' ', '-')


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    for line in prose(path.read_text()).splitlines():
        m = re.match(r'#{1,6}\s+(.*?)\s*#*\s*$', line)
        if m:
            base = slug(m.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            found.add(base if n == 0 else f'{base}-{n}')
    return found


def expand(path: str) -> list[str]:
    """``a/{b,c}/d`` -> ``a/b/d``, ``a/c/d``."""
    m = re.search(r'\{([^{}]*)\}', path)
    if not m:
        return [path]
    return list(
        itertools.chain.from_iterable(
            expand(path[: m.start()] + part + path[m.end() :])
            for part in m.group(1).split(',')
        )
    )


def resolves(path: str) -> bool:
    path = path.rstrip('.,;:')
    if '<' in path:  # a placeholder such as configs/cls/<config>
        path = path[: path.index('<')].rsplit('/', 1)[0]
    for one in expand(path):
        if '*' in one:
            if not list(ROOT.glob(one)):
                return False
        elif not (ROOT / one).exists():
            return False
    return True


def broken_links(doc: Path) -> list[str]:
    bad = []
    for target in LINK.findall(prose(doc.read_text())):
        if re.match(r'[a-z]+:', target):  # https:, mailto:
            continue
        file, _, anchor = target.partition('#')
        dest = (doc.parent / file).resolve() if file else doc
        if not dest.exists():
            bad.append(f'{rel(doc)}: {target} (no such file)')
        elif anchor and dest.suffix == '.md' and anchor not in anchors(dest):
            bad.append(f'{rel(doc)}: {target} (no heading #{anchor})')
    return bad


@pytest.mark.parametrize('doc', DOCS, ids=rel)
def test_relative_links_resolve(doc):
    assert doc.exists(), f'{rel(doc)} is missing'
    assert not broken_links(doc)


@pytest.mark.parametrize('doc', DOCS, ids=rel)
def test_repository_paths_exist(doc):
    missing = sorted(
        {p for p in PATH.findall(doc.read_text()) if not resolves(p)},
    )
    assert not missing, f'{rel(doc)} names paths that do not exist: {missing}'


def tool_calls(text: str):
    """(tool, rest of the line) for every command line in code blocks and
    every code span that calls a script under tools/."""
    lines = []
    for block in FENCE.findall(text):
        lines += block.splitlines()[1:-1]
    lines += CODE_SPAN.findall(prose(text))
    for line in lines:
        m = TOOL_CALL.search(line)
        if m:
            yield m.group(1), m.group(2).split('#')[0]


def option_sources(tool: str) -> str:
    paths = [tool] + OPTION_SOURCES.get(tool, [])
    text = []
    for p in map(ROOT.joinpath, paths):
        files = sorted(p.rglob('*.py')) if p.is_dir() else [p]
        text += [f.read_text() for f in files if f.exists()]
    return '\n'.join(text)


@pytest.mark.parametrize('doc', DOCS, ids=rel)
def test_documented_tool_options_exist(doc):
    """Every --option a documented command passes to a tool is one the tool
    (or what it hands its arguments to) defines."""
    unknown = set()
    for tool, rest in tool_calls(doc.read_text()):
        assert (ROOT / tool).exists(), f'{rel(doc)}: {tool} does not exist'
        source = option_sources(tool)
        for flag in set(FLAG.findall(rest)) - {'--help'}:
            if f"'{flag}'" not in source and f'"{flag}"' not in source:
                unknown.add(f'{tool} {flag}')
    assert not unknown, f'{rel(doc)}: options the tools do not define: {unknown}'


def configs_on_disk() -> set[str]:
    return {
        rel(p)
        for t in TASKS
        for p in (ROOT / 'configs' / t).rglob('*.py')
        if '_base_' not in p.parts
    }


def tables(doc: Path) -> list[tuple[list[str], list[list[str]]]]:
    """(header cells, row cells) of every Markdown table in ``doc``."""
    found = []
    lines = prose(doc.read_text()).splitlines() + ['']
    block: list[str] = []
    for line in lines:
        if line.startswith('|'):
            block.append(line)
            continue
        if len(block) >= 2 and re.fullmatch(r'\|[\s|:-]+\|', block[1].strip()):
            header, *rows = [cells(b) for b in block[:1] + block[2:]]
            found.append((header, rows))
        block = []
    return found


def cells(line: str) -> list[str]:
    return [c.strip() for c in re.split(r'(?<!\\)\|', line.strip().strip('|'))]


def linked_configs(row: list[str], doc: Path) -> set[str]:
    """Configs that the cells of a table row link to."""
    found = set()
    for target in LINK.findall(' | '.join(row)):
        path = (doc.parent / target.partition('#')[0]).resolve()
        if path.suffix == '.py' and path.is_relative_to(ROOT / 'configs'):
            found.add(rel(path))
    return found


def test_every_config_is_in_its_task_readme_table():
    for task, readme in zip(TASKS, TASK_READMES):
        wanted = {c for c in configs_on_disk() if c.startswith(f'configs/{task}/')}
        listed = {
            c
            for _, rows in tables(readme)
            for row in rows
            for c in linked_configs(row, readme)
        }
        missing = wanted - listed
        assert not missing, f'{rel(readme)} has no table row for {sorted(missing)}'


def metafile_models() -> dict[str, dict]:
    models = {}
    for task in TASKS:
        meta = yaml.safe_load((ROOT / 'configs' / task / 'metafile.yml').read_text())
        models.update({m['Config']: m for m in meta['Models']})
    return models


def test_metafiles_point_to_their_task_readme():
    for task in TASKS:
        meta = yaml.safe_load((ROOT / 'configs' / task / 'metafile.yml').read_text())
        for collection in meta['Collections']:
            assert collection['README'] == f'configs/{task}/README.md', collection


def test_table_figures_equal_the_metafiles():
    """A per-task README row that links a config gives its params and FLOPs
    as the metafile records them (get_flops.py's counts)."""
    models = metafile_models()
    wrong = []
    for readme in TASK_READMES:
        for header, rows in tables(readme):
            for row in rows:
                configs = linked_configs(row, readme)
                if len(configs) != 1:
                    continue
                (config,) = configs
                meta = models[config]['Metadata']
                expected = {'params': f'{meta["Parameters"] / 1e6:.2f}M'}
                if 'FLOPs' in meta:
                    expected['FLOPs'] = f'{meta["FLOPs"] / 1e9:.2f}G'
                for column, want in expected.items():
                    got = dict(zip(header, row)).get(column)
                    if got is not None and got != want:
                        wrong.append(
                            f'{rel(readme)}: {config} {column} {got} != {want}'
                        )
    assert not wrong, wrong


def readme_commands() -> list[str]:
    """The commands of the shell block of the README's Quick start."""
    text = (ROOT / 'README.md').read_text()
    section = re.search(r'^## Quick start\n(.*?)(?=^## )', text, re.S | re.M)
    assert section, 'README.md has no "## Quick start" section'
    block = re.search(r'^```bash\n(.*?)^```', section.group(1), re.S | re.M)
    lines = [line.split('#')[0].strip() for line in block.group(1).splitlines()]
    return [line for line in lines if line]


def test_readme_commands_are_what_ci_runs():
    """The README's quick start is the main job and the tests, and CI runs
    the README's test command."""
    commands = readme_commands()
    assert commands == ['bash tools/run_demo.sh', 'bash tools/run_tests.sh']
    ci = (ROOT / '.ci' / 'run').read_text()
    assert set(re.findall(r'\bbash (tools/\S+\.sh)', ci)) == {'tools/run_tests.sh'}
    demo = (ROOT / 'tools' / 'run_demo.sh').read_text()
    assert re.search(r'^exec "\$PYTHON" tools/demo\.py', demo, re.M)
    tests = (ROOT / 'tools' / 'run_tests.sh').read_text()
    assert re.search(r'^exec "\$PYTHON" -m pytest tests', tests, re.M)


def test_readme_is_short():
    lines = len((ROOT / 'README.md').read_text().splitlines())
    assert lines <= README_MAX_LINES, f'README.md has {lines} lines'


@pytest.mark.parametrize('doc', DESCRIPTIONS, ids=rel)
def test_no_development_words(doc):
    hits = [
        f'{rel(doc)}:{n}: {m.group(0)!r}'
        for n, line in enumerate(doc.read_text().splitlines(), 1)
        for m in DEVELOPMENT_WORDS.finditer(line)
    ]
    assert not hits, hits


@pytest.mark.parametrize('doc', DESCRIPTIONS, ids=rel)
def test_speed_and_memory_figures_only_in_benchmarks(doc):
    if doc.name == 'benchmarks.md':
        pytest.skip('the one home of speed and memory figures')
    hits = [
        f'{rel(doc)}:{n}: {m.group(0)!r}'
        for n, line in enumerate(prose(doc.read_text()).splitlines(), 1)
        for m in SPEED_OR_MEMORY.finditer(line)
    ]
    assert not hits, hits


def test_every_benchmark_figure_has_command_device_date_and_commit():
    doc = ROOT / 'docs' / 'benchmarks.md'
    for header, rows in tables(doc):
        for row in rows:
            cell = dict(zip(header, row))
            command = cell.get('command', '')
            assert re.fullmatch(
                r'`python3? tools/analysis_tools/\S+\.py[^`]*`', command
            ), row
            assert cell.get('device'), row
            assert re.fullmatch(r'\d{4}-\d{2}-\d{2}', cell.get('date', '')), row
            assert re.fullmatch(r'[0-9a-f]{7,40}', cell.get('commit', '')), row


def documented_python_names(text: str) -> set[str]:
    return {
        m.group(0).rstrip('.()')
        for span in CODE_SPAN.findall(text)
        for m in re.finditer(r'\bnommer_mm(?:\.\w+)+', span)
    }


def test_documented_python_names_exist():
    """Every ``nommer_mm.x.y`` the documentation names imports or is an
    attribute of what imports."""
    missing = []
    for doc in DOCS:
        for name in sorted(documented_python_names(doc.read_text())):
            if not python_name_exists(name):
                missing.append(f'{rel(doc)}: {name}')
    assert not missing, missing


def python_name_exists(name: str) -> bool:
    parts = name.split('.')
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module('.'.join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


def test_tool_docstrings_speak_to_users():
    """The help a tool prints (its module docstring) names no removed
    feature and no development history."""
    words = re.compile(
        r'\bissue \d+|\bleases?\b|fast[ _-]paths?|NOMMER_FAST|onednn|'
        r'gpu_lease|gpu_figures|--targets',
        re.I,
    )
    hits = []
    for path in sorted((ROOT / 'tools').rglob('*.py')):
        doc = ast.get_docstring(ast.parse(path.read_text())) or ''
        hits += [f'{rel(path)}: {m.group(0)!r}' for m in words.finditer(doc)]
    assert not hits, hits


def test_changelog_has_a_dated_section_for_the_current_version():
    """Dated release sections of one-line entries, the newest first and
    equal to nommer_mm/version.py."""
    text = (ROOT / 'CHANGELOG.md').read_text()
    version = re.search(
        r"__version__ = '([^']+)'", (ROOT / 'nommer_mm' / 'version.py').read_text()
    ).group(1)
    releases = re.findall(r'^## (\S+) \((\d{4}-\d{2}-\d{2})\)$', text, re.M)
    assert releases and releases[0][0] == version, (releases, version)
    body = [line for line in text.splitlines()[1:] if line and not line.startswith('#')]
    assert all(line.startswith('- ') for line in body), body


TOOL_SCRIPTS = sorted(
    str(p.relative_to(ROOT))
    for p in (ROOT / 'tools').rglob('*.py')
    if 'deps_installer' not in p.parts
    and p.name not in ('demo_data.py', 'demo_configs.py', 'bounded_run.py')
)


@pytest.mark.parametrize('tool', TOOL_SCRIPTS)
def test_every_tool_option_is_documented(tool):
    """Each option a tool's --help shows appears in the documentation."""
    from tool_parsers import documented_options, tool_parser

    text = '\n'.join(d.read_text() for d in DESCRIPTIONS)
    missing = sorted(
        names[0]
        for names in documented_options(tool_parser(tool))
        if not any(re.search(re.escape(n) + r'(?![\w-])', text) for n in names)
    )
    assert not missing, f'{tool}: options no document mentions: {missing}'


PERCENT_CELL = re.compile(r'^([\d.]+)G \(([+-]?[\d.]+)%\)$')
WITHIN = re.compile(r'\(b\)\s+is within ([+-][\d.]+)% to ([+-][\d.]+)%')


@pytest.mark.parametrize('doc', TASK_READMES[1:], ids=rel)
def test_flop_percentages_follow_from_their_tables(doc):
    """A FLOP cell's percentage is its difference to the paper's figure in
    the same row, to the digits shown, and a sentence's range of (b)
    percentages is the column's lowest and highest."""
    wrong, column_b = [], []
    for header, rows in tables(doc):
        if 'FLOPs (paper)' not in header:
            continue
        for row in rows:
            values = dict(zip(header, row))
            paper = values['FLOPs (paper)'].rstrip('G')
            for column, cell in values.items():
                m = PERCENT_CELL.match(cell)
                if not m:
                    continue
                flops, shown = float(m.group(1)), m.group(2)
                digits = len(shown.split('.')[1]) if '.' in shown else 0
                percent = round((flops / float(paper) - 1) * 100, digits)
                if float(shown) != percent:
                    wrong.append(f'{row[0]} {column}: {shown}% != {percent}%')
                if column == 'FLOPs (b)':
                    column_b.append(shown)
    assert not wrong, f'{rel(doc)}: {wrong}'
    ranges = WITHIN.findall(prose(doc.read_text()).replace('\n', ' '))
    assert ranges, f'{rel(doc)} states no range of its (b) percentages'
    low = min(column_b, key=float)
    high = max(column_b, key=float)
    assert ranges == [(low, high)], (ranges, low, high)


def test_classifier_resolutions_are_their_configs_sizes():
    """The classification README's resolution column, the metafile's Input
    Size and the size the config's backbone is built for agree."""
    from cls_helpers import cached_config

    models = metafile_models()
    readme = TASK_READMES[0]
    wrong = []
    for header, rows in tables(readme):
        if 'resolution' not in header:
            continue
        for row in rows:
            configs = linked_configs(row, readme)
            if len(configs) != 1:
                continue
            (config,) = configs
            shown = int(dict(zip(header, row))['resolution'])
            recorded = models[config]['Metadata']['Input Size']
            built = cached_config(ROOT / config).model.backbone.get('img_size')
            if shown != recorded or built not in (None, shown):
                wrong.append(f'{config}: README {shown}, metafile {recorded}, {built}')
    assert not wrong, wrong
