"""The command line: help, version, JSON output, one-line errors."""
from __future__ import annotations

import json
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner
from PIL import Image

from artengine import __version__
from artengine.cli import cli


def _all_commands(group: click.Group, prefix=()):
    for name, command in group.commands.items():
        yield (*prefix, name)
        if isinstance(command, click.Group):
            yield from _all_commands(command, (*prefix, name))


def test_version():
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output


@pytest.mark.parametrize("path", [(), *_all_commands(cli)], ids=lambda p: " ".join(p) or "root")
def test_help_on_every_command(path):
    result = CliRunner().invoke(cli, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


@pytest.mark.parametrize("argv, where, what", [
    (["generate", "--model", "m", "--out", "o", "--seed", "-1"], "artengine generate",
     "Invalid value for '--seed': -1 is not in the range 0<=x<=18446744073709551615."),
    (["train", "--arch", "cgan", "--data", "shapes", "--out", "o", "--seed", "-1"], "artengine train",
     "Invalid value for '--seed'"),
    (["generate", "--chunk", "4"], "artengine generate", "No such option '--chunk'"),
    (["registry", "add"], "artengine registry add", "Missing argument 'DB'."),
    (["generat"], "artengine", "No such command 'generat'. Did you mean 'generate'?"),
    (["--bogus"], "artengine", "No such option '--bogus'"),
])
def test_a_bad_option_or_command_is_one_line_naming_the_command(argv, where, what, tmp_path):
    result = subprocess.run([sys.executable, "-m", "artengine", *argv], capture_output=True, text=True,
                            timeout=120, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith(f"Error: {where}: ") and what in result.stderr, result.stderr
    assert result.stderr.rstrip().endswith(f"(see {where} --help)")
    assert len(result.stderr.strip().splitlines()) == 1 and result.stdout == ""
    assert list(tmp_path.iterdir()) == []  # nothing written


@pytest.mark.parametrize("argv", [[], ["registry"]], ids=["root", "registry"])
def test_a_group_named_without_a_command_shows_its_help(argv):
    result = subprocess.run([sys.executable, "-m", "artengine", *argv], capture_output=True, text=True, timeout=120)
    out = result.stdout + result.stderr
    assert out.startswith(f"Usage: artengine {' '.join(argv)}".rstrip() + " [OPTIONS] COMMAND [ARGS]...")
    assert "Commands:" in out and "Error" not in out


def test_plugins_json_is_valid_and_lists_builtins():
    result = subprocess.run([sys.executable, "-m", "artengine", "plugins", "--json"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    names = {p["name"] for p in doc["plugins"]}
    assert {"shapes", "imagefolder"} <= names
    assert all(p["status"] == "loaded" for p in doc["plugins"])


def test_data_preview_writes_a_sheet(tmp_path):
    out = tmp_path / "sheet.png"
    result = CliRunner().invoke(cli, ["data", "preview", "shapes", "--out", str(out), "--count", "8",
                                      "--image-size", "32"])
    assert result.exit_code == 0, result.output
    assert Image.open(out).size == (8 * 32 + 9 * 2, 32 + 2 * 2)


def test_a_fault_of_the_program_is_exit_2_with_its_traceback_never_the_blocked_code(monkeypatch):
    """A crash (a bug, a library failing) must not exit 1, which CI reads as "the policy
    blocked something": its traceback for a report, and the error code 2."""
    import artengine.cli as cli_module

    def broken():
        raise RuntimeError("the registry of plugins fell over")

    monkeypatch.setattr(cli_module, "get_plugins", broken)
    result = CliRunner().invoke(cli, ["plugins"], prog_name="artengine")
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert lines[0].startswith("Traceback") and "RuntimeError: the registry of plugins fell over" in result.output
    assert lines[-1] == ("Error: artengine plugins: internal error (RuntimeError: the registry of plugins fell over); "
                         "the traceback above is for a bug report")


def test_bad_input_is_one_line_and_exit_2_without_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "artengine", "data", "preview", str(tmp_path / "missing"),
         "--out", str(tmp_path / "x.png")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "missing" in result.stderr
