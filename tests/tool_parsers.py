"""The argument parser of a script under tools/, taken from the script as
it runs (its ``main`` up to the parse), without running the rest."""

from __future__ import annotations

import argparse
import functools
import runpy
import sys
from pathlib import Path
from unittest import mock

ROOT = Path(__file__).resolve().parents[1]


class _Parsed(Exception):
    def __init__(self, parser: argparse.ArgumentParser) -> None:
        super().__init__()
        self.parser = parser


@functools.lru_cache(maxsize=None)
def tool_parser(tool: str) -> argparse.ArgumentParser:
    """``tools/...py``'s parser (made once per tool): the script runs as
    ``__main__`` until it asks its parser to parse."""

    def stop(self, args=None, namespace=None):
        raise _Parsed(self)

    path = ROOT / tool
    saved = sys.argv
    sys.argv = [str(path)]
    sys.path.insert(0, str(path.parent))
    try:
        with mock.patch.object(argparse.ArgumentParser, 'parse_args', stop):
            runpy.run_path(str(path), run_name='__main__')
    except _Parsed as parsed:
        return parsed.parser
    finally:
        sys.argv = saved
        sys.path.remove(str(path.parent))
    raise AssertionError(f'{tool} returned without parsing arguments')


def parse_tool_args(tool: str, argv: list[str]) -> argparse.Namespace:
    """``argv`` parsed by ``tool``'s parser; an argument it refuses raises
    SystemExit (argparse's exit 2)."""
    return tool_parser(tool).parse_args(argv)


def documented_options(parser: argparse.ArgumentParser) -> list[tuple[str, ...]]:
    """The long options a user sees in ``--help``, one tuple per option
    (its spellings)."""
    return [
        names
        for action in parser._actions
        if action.help != argparse.SUPPRESS
        and (names := tuple(o for o in action.option_strings if o.startswith('--')))
        and names != ('--help',)
    ]
