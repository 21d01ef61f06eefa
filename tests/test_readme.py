"""The README's commands: every `mlflow ui` it shows binds to localhost only."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

from .conftest import REPO


# ------------------------------------------------------------------------------ README: mlflow ui
def _readme_commands(text: str) -> list[str]:
    """Shell lines of fenced code blocks, then inline code spans of the prose."""
    fenced = re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.S | re.M)
    prose = re.sub(r"^```[^\n]*\n.*?^```", "", text, flags=re.S | re.M)
    lines = [line for block in fenced for line in block.splitlines()]
    return lines + re.findall(r"`([^`\n]+)`", prose)


def _mlflow_servers(line: str) -> list[list[str]]:
    """Every ``mlflow ui``/``mlflow server`` command in a shell line (comments dropped), as argv."""
    try:
        words = shlex.split(line, comments=True)
    except ValueError:
        words = line.split("#")[0].split()
    commands, current = [], []
    for w in words:
        if w in ("&&", "||", ";", "|", "&"):
            commands.append(current)
            current = []
        else:
            current.append(w)
    commands.append(current)
    found = []
    for cmd in commands:
        for i in range(len(cmd) - 1):
            if Path(cmd[i]).name == "mlflow" and cmd[i + 1] in ("ui", "server"):
                found.append(cmd[i:])
    return found


def _host(argv: list[str]) -> str | None:
    for i, w in enumerate(argv):
        if w in ("--host", "-h") and i + 1 < len(argv):
            return argv[i + 1]
        if w.startswith("--host="):
            return w.split("=", 1)[1]
    return None


def test_readme_mlflow_ui_commands_bind_to_localhost_only():
    commands = [cmd for line in _readme_commands((REPO / "README.md").read_text())
                for cmd in _mlflow_servers(line)]
    assert commands, "README.md shows no `mlflow ui` / `mlflow server` command"
    wrong = [" ".join(c) for c in commands if _host(c) != "127.0.0.1"]
    assert not wrong, f"README commands that do not bind the MLflow UI to 127.0.0.1 only: {wrong}"


def test_readme_command_parser_catches_an_open_host():
    """The check above can fail: a command without a host, or with 0.0.0.0, is caught."""
    text = ("```bash\nmlflow ui --host 127.0.0.1   # ok\ncd x && mlflow server --port 5000\n```\n"
            "or `mlflow ui --host=0.0.0.0`\n")
    hosts = [_host(c) for line in _readme_commands(text) for c in _mlflow_servers(line)]
    assert hosts == ["127.0.0.1", None, "0.0.0.0"]
