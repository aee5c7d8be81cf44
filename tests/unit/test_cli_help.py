"""Every command's --help prints its usage and exits 0 (a help text with a bare '%' once
made argparse raise on `collect --help`, `run --help` and every command taking settings)."""

from __future__ import annotations

import argparse

import pytest

from collector.cli import build_parser


def _commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*prefix, name)
                yield from _commands(sub, (*prefix, name))


COMMANDS = sorted(set(_commands(build_parser())))


def test_the_command_list_is_read_from_the_parser():
    assert ("collect",) in COMMANDS and ("run",) in COMMANDS and len(COMMANDS) > 20


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_help_prints_usage(command, capsys):
    with pytest.raises(SystemExit) as done:
        build_parser().parse_args([*command, "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: ")
    assert command[-1] in out.splitlines()[0]
