"""The README's two commands are the project's contract with a new user and with CI."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _commands() -> list[str]:
    return re.findall(r"```sh\n(.+?)\n```", (ROOT / "README.md").read_text())


def test_readme_opens_with_demo_then_test_command():
    commands = _commands()
    assert len(commands) >= 2
    assert "artengine " in commands[0]
    assert "pytest" in commands[1]


def test_ci_runs_the_readme_test_command_verbatim():
    assert _commands()[1] in (ROOT / ".ci" / "run").read_text()
