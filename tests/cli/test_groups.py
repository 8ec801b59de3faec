"""The typed option groups and the commands' options: every option is a named parameter of its command or a
field of one of its groups (an option renamed alone fails here, not in a user's run), and the library's
defaults are the commands' defaults."""

from __future__ import annotations

import dataclasses
import inspect

import click
import pytest

from onnxredund.analyses.audit import run_audit
from onnxredund.analyses.evaluate import evaluate
from onnxredund.analyses.impulse import run_impulse
from onnxredund.analyses.prune import run_prune
from onnxredund.analyses.reproduce import run_reproduce
from onnxredund.analyses.shuffle import SweepOptions, run_shuffle
from onnxredund.cli.commands import COMMANDS
from onnxredund.cli.groups import BackendArgs, DataArgs, EstimationArgs, ModelArgs

GROUPS = (ModelArgs, DataArgs, BackendArgs, EstimationArgs)

#: per command, the library functions (and option classes) it calls with its options
LIBRARY = {
    "evaluate": [evaluate],
    "shuffle": [SweepOptions, run_shuffle],
    "impulse": [run_impulse],
    "audit": [run_audit],
    "reproduce": [run_reproduce],
    "prune": [run_prune],
}
#: an option whose library parameter has another name, and what its default means there
RENAMED = {"compensate": ("compensation", {"none": None}), "eval_samples": ("evaluation", {})}
#: a command's default that the library spells otherwise
SAME = {("modes", "both"): ("channel", "pixel"), ("backend", "local"): None}


def _fields(group) -> set[str]:
    return {f.name for f in dataclasses.fields(group)}


@pytest.mark.parametrize("group", GROUPS, ids=lambda g: g.__name__)
def test_an_option_groups_fields_are_the_options_it_adds(group):
    command = group.decorator(click.command()(lambda **_: None))
    assert {p.name for p in command.params} == _fields(group)


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c.name)
def test_every_option_of_a_command_is_a_parameter_of_it_or_a_field_of_a_group_it_takes_whole(command):
    options = {p.name for p in command.params}
    signature = inspect.signature(command.callback.__wrapped__).parameters
    named = {n for n, p in signature.items() if p.kind is not p.VAR_KEYWORD} - {"ctx"}
    grouped = getattr(command.callback, "option_groups", ())
    for group in grouped:
        assert _fields(group) <= options, f"{command.name} takes part of {group.__name__}"
        assert not _fields(group) & named, f"{command.name} names options of {group.__name__}"
    assert named | set().union(*map(_fields, grouped)) == options
    assert any(p.kind is p.VAR_KEYWORD for p in signature.values()) == bool(grouped)


def _default(param: click.Parameter):
    value = param.default
    if value is None or type(value).__name__ == "Sentinel":  # click's "no default": None, or False for a flag
        return False if getattr(param, "is_flag", False) else None
    return value


@pytest.mark.parametrize("command", [c for c in COMMANDS if c.name in LIBRARY], ids=lambda c: c.name)
def test_the_library_takes_the_commands_defaults(command):
    checked = 0
    for function in LIBRARY[command.name]:
        parameters = inspect.signature(function).parameters
        for param in command.params:
            name, meaning = RENAMED.get(param.name, (param.name, {}))
            if name not in parameters or parameters[name].default is inspect.Parameter.empty:
                continue
            default = _default(param)
            default = meaning.get(default, default) if isinstance(default, str) else default
            default = SAME.get((param.name, default), default) if isinstance(default, str) else default
            library = parameters[name].default
            assert library == default, f"{command.name} --{param.name}: {default!r}, {function.__name__}: {library!r}"
            checked += 1
    assert checked  # the command passes some of its options on
