"""`vlmgrpo COMMAND --help` texts as a new user reads them."""

from __future__ import annotations


def test_every_command_description_is_whole_sentences():
    # the description was the docstring's first line, which cut wrapped sentences mid-way
    # ("... GRPO on a task's own" for `vlmgrpo demo --help`)
    from vlmgrpo.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    cut = {
        name: p.description
        for name, p in sub.choices.items()
        if not p.description.rstrip().endswith((".", ")"))
    }
    assert not cut, cut
    assert "\n" not in sub.choices["demo"].description
