"""`--help` reads well on an 80-column terminal, for every command, and its examples are real commands."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys

import pytest
import typer
from typer import _click as click  # Typer's own copy of click (no click dependency)

from clibd_cli.cli import COMMANDS, app
from clibd_training.config import presets


def _command_paths(command: click.Command, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command and subcommand (e.g. ('models', 'get')), walking the click tree."""
    paths = [prefix] if prefix else []
    for name, sub in getattr(command, "commands", {}).items():
        paths += _command_paths(sub, (*prefix, name))
    return paths


ROOT_COMMAND = typer.main.get_command(app)
NAMES = [" ".join(path) for path in _command_paths(ROOT_COMMAND)]
assert {name for name, _ in COMMANDS} <= set(NAMES)

ARTEFACTS = re.compile(r"<bool>|<list\[|<int range>|<path>|<str>|<int>|<float>|\{[a-z_]+\}|…")


def _help(*args: str) -> str:
    """The help as a user's 80-column terminal shows it (a real process: Rich reads COLUMNS at start-up)."""
    env = {**os.environ, "COLUMNS": "80", "TERMINAL_WIDTH": "80", "NO_COLOR": "1"}
    env.pop("FORCE_COLOR", None)
    script = "import sys; from clibd_cli.app import main; sys.argv[0] = 'clibd'; main()"
    done = subprocess.run([sys.executable, "-c", script, *args, "--help"], capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def helps() -> dict[str, str]:
    return {name: _help(*name.split()) for name in ["", *NAMES]}


def _command(name: str) -> click.Command:
    """The command as the CLI resolves it (through each group's get_command, as parsing does)."""
    command = ROOT_COMMAND
    for part in name.split():
        command = command.get_command(click.Context(command), part)  # type: ignore[attr-defined]
    return command


def _options(name: str) -> list[click.Parameter]:
    command = _command(name)
    return command.get_params(click.Context(command))


@pytest.mark.parametrize("name", ["", *NAMES])
def test_help_has_no_python_types_and_fits(helps, name):
    text = helps[name]
    found = ARTEFACTS.findall(text)
    assert not found, f"clibd {name} --help shows {found}"
    wide = [line for line in text.splitlines() if len(line) > 80]
    assert not wide, f"clibd {name} --help has lines over 80 columns: {wide[:2]}"


@pytest.mark.parametrize("name", NAMES)
def test_every_option_name_is_whole_and_usage_is_clean(helps, name):
    text = helps[name]
    usage = next(line for line in text.splitlines() if "Usage:" in line)
    tail = r"( COMMAND \[ARGS\]\.\.\.)?" if getattr(_command(name), "commands", None) else r"( \[?[A-Z_]+(\.\.\.)?\]?)*"
    assert re.fullmatch(rf"\s*Usage: clibd {name} \[OPTIONS\]{tail}\s*", usage), usage
    for param in _options(name):
        for opt in [*param.opts, *param.secondary_opts]:
            if opt.startswith("--"):
                assert re.search(rf"(?<![\w-]){re.escape(opt)}(?![\w-])", text), f"{opt} missing or cut in {name}"


@pytest.mark.parametrize("name", NAMES)
def test_examples_use_only_real_options(helps, name):
    """Each example under the options is a command line that this command parses (options that exist)."""
    lines = [line.strip() for line in helps[name].splitlines() if line.strip().startswith(f"clibd {name} ")]
    if getattr(_command(name), "commands", None):
        return  # a group: its subcommands carry the examples
    assert lines, f"clibd {name} --help shows no example"
    known = {opt for param in _options(name) for opt in [*param.opts, *param.secondary_opts]}
    for line in lines:
        used = [word.split("=")[0] for word in shlex.split(line) if word.startswith("-")]
        unknown = [opt for opt in used if opt not in known]
        assert not unknown, f"example {line!r} uses options {name} does not have: {unknown}"


def test_flags_have_no_negative_twin_unless_on_by_default(helps):
    assert "--no-force" not in helps["match"] and "--force" in helps["match"]
    assert "--no-calibrate" in helps["build-index"]  # on by default: the off switch is what users need


def test_train_lists_every_preset(helps):
    text = re.sub(r"\s+", " ", re.sub(r"[│╭╮╰╯─]", " ", helps["train"]))
    for preset in presets():
        assert preset in text
    assert "demo-cpu" in presets()
