"""Every option of every command explains itself (help text; choices and defaults where they
exist), and the presets are listed with descriptions."""

from __future__ import annotations

import argparse

import pytest

from ddmi.cli import build_parser, main
from ddmi.preset_files import list_presets, preset_description


def subcommands():
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return sub.choices


@pytest.mark.parametrize("name", sorted(subcommands()))
def test_every_option_has_help(name):
    parser = subcommands()[name]
    missing = [a.dest for a in parser._actions
               if not isinstance(a, argparse._HelpAction) and not (a.help and a.help.strip())]
    assert missing == [], f"ddmi {name}: options without help: {missing}"


def test_every_preset_has_a_description_and_train_help_lists_them(capsys):
    for name in list_presets():
        assert len(preset_description(name)) > 10, name
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert all(name in out for name in list_presets()) and "CPU-size model" in out


def test_info_list_gives_descriptions(capsys):
    assert main(["info", "--list"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == len(list_presets()) and all(len(line.split()) > 2 for line in lines)


def test_sampler_help_lists_the_samplers(capsys):
    from ddmi.diffusion import SAMPLERS
    with pytest.raises(SystemExit):
        main(["sample", "--help"])
    out = capsys.readouterr().out
    assert all(s in out for s in SAMPLERS)
