"""The argument parser of a script under tools/, taken from the script as
it runs (its ``main`` up to the parse), without running the rest."""

from __future__ import annotations

import argparse
import runpy
import sys
from pathlib import Path
from unittest import mock

ROOT = Path(__file__).resolve().parents[1]


class _Parsed(Exception):
    def __init__(self, parser, namespace) -> None:
        super().__init__()
        self.parser, self.namespace = parser, namespace


def _run_until_parsed(tool: str, argv: list[str], parse: bool) -> _Parsed:
    real = argparse.ArgumentParser.parse_args

    def stop(self, args=None, namespace=None):
        ns = real(self, args, namespace) if parse else None
        raise _Parsed(self, ns)

    path = ROOT / tool
    saved = sys.argv
    sys.argv = [str(path), *argv]
    sys.path.insert(0, str(path.parent))
    try:
        with mock.patch.object(argparse.ArgumentParser, 'parse_args', stop):
            runpy.run_path(str(path), run_name='__main__')
    except _Parsed as parsed:
        return parsed
    finally:
        sys.argv = saved
        sys.path.remove(str(path.parent))
    raise AssertionError(f'{tool} returned without parsing arguments')


def tool_parser(tool: str) -> argparse.ArgumentParser:
    """``tools/...py``'s parser."""
    return _run_until_parsed(tool, [], parse=False).parser


def parse_tool_args(tool: str, argv: list[str]) -> argparse.Namespace:
    """``argv`` parsed by ``tool``'s parser; an argument it refuses raises
    SystemExit (argparse's exit 2)."""
    return _run_until_parsed(tool, argv, parse=True).namespace


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
