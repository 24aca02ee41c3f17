"""The README is a contract: every command and Python block in it runs as written.

Each shell command of the README's ``bash`` blocks is either run here, in README order in
one working directory (later commands read what earlier ones wrote), with the budget
flags of ``TINY_BUDGET`` appended (argparse: a later flag wins, so the command is the
README's own with smaller numbers), or it is listed in ``MIRRORED`` with the test that
runs what it does. Python blocks run unchanged, or are mirrored the same way. A command
added to the README that neither table covers fails :func:`test_every_readme_block_is_covered`.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"

# Appended to each command (the longest matching prefix) so that it runs in seconds.
TINY_BUDGET = {
    "pysteer info": [],
    "pysteer generate": ["--max-new-tokens", "4"],
    "pysteer discover diff-means": ["--n-prompts", "2"],
    "pysteer discover saif": ["--n-prompts", "2"],
    "pysteer discover concise": ["--n-prompts", "2", "--max-new-tokens", "8"],
    "pysteer eval": ["--limit", "2", "--max-new-tokens", "4"],
    "pysteer frontier": ["--n-prompts", "2", "--strengths", "0.5", "1", "--max-new-tokens", "4"],
    "pysteer tune": ["--rounds", "2", "--q", "2", "--minibatch", "2", "--max-new-tokens", "4",
                     "--restarts", "1", "--raw-samples", "16"],
    "pysteer train-sae": ["--tokens", "2048", "--batch-size", "256", "--buffer-tokens", "1024",
                          "--eval-tokens", "256", "--n-prompts", "40", "--max-new-tokens", "24",
                          "--d-sae", "256", "--k", "8", "--quiet"],
}

# Not run here: what runs it instead.
MIRRORED = {
    "pip install": "the set-up itself: .ci/run runs the README's ci:setup command",
    "python -m pytest": "this test suite",
    "pysteer demo": "tests/test_experiment.py::test_demo_cli_end_to_end_on_a_tiny_model (the demo's "
                    "command on a tiny model and budget); its full run is timed in a fresh clone",
    "pysteer serve": "tests/test_serving.py (a real server on 127.0.0.1, queried with the openai client)",
    "python:from openai import OpenAI": "tests/test_serving.py (the same client calls against pysteer serve)",
}


@dataclass
class Block:
    language: str
    line: int
    text: str


def readme_blocks() -> list[Block]:
    blocks, language, start, lines = [], None, 0, []
    for number, line in enumerate(README.read_text().splitlines(), start=1):
        fence = re.match(r"^```(\w*)\s*$", line)
        if fence and language is None:
            language, start, lines = fence.group(1) or "text", number, []
        elif fence:
            blocks.append(Block(language, start, "\n".join(lines) + "\n"))
            language = None
        elif language is not None:
            lines.append(line)
    return blocks


def shell_commands(block: Block) -> list[str]:
    """The block's commands: continuation lines joined, comments and blank lines dropped."""
    commands, pending = [], ""
    for line in block.text.splitlines():
        line = pending + line
        if line.rstrip().endswith("\\"):
            pending = line.rstrip()[:-1] + " "
            continue
        pending = ""
        command = line.split(" #", 1)[0].strip()
        if command and not command.startswith("#"):
            commands.append(command)
    return commands


def steps() -> list[tuple[str, str]]:
    """("shell" | "python", text) for every README command and Python block, in order."""
    found = []
    for block in readme_blocks():
        if block.language == "bash":
            found += [("shell", command) for command in shell_commands(block)]
        elif block.language == "python":
            found.append(("python", block.text))
    return found


def mirrored_by(kind: str, text: str) -> "str | None":
    key = text if kind == "shell" else "python:" + text
    return next((why for prefix, why in MIRRORED.items() if key.startswith(prefix)), None)


def budget_for(command: str) -> "list[str] | None":
    matches = [prefix for prefix in TINY_BUDGET if command == prefix or command.startswith(prefix + " ")]
    return TINY_BUDGET[max(matches, key=len)] if matches else None


def test_every_readme_block_is_covered():
    """Each command is run or mirrored, each table entry still names something in the README,
    and every run command parses with the CLI as written."""
    from pysteer.cli import build_parser

    parser = build_parser()
    used_prefixes = set()
    for kind, text in steps():
        if mirrored_by(kind, text):
            key = text if kind == "shell" else "python:" + text
            used_prefixes |= {p for p in MIRRORED if key.startswith(p)}
            continue
        if kind == "python":
            continue
        budget = budget_for(text)
        assert budget is not None, f"README command {text!r} is neither run by this test nor mirrored"
        used_prefixes |= {p for p in TINY_BUDGET if text.startswith(p)}
        parser.parse_args(shlex.split(text)[1:] + budget)  # a renamed flag fails here, at once
    stale = set(MIRRORED) | set(TINY_BUDGET)
    assert not stale - used_prefixes, f"entries naming nothing in the README: {stale - used_prefixes}"


def test_the_readme_runs_as_written(tmp_path, smollm2):
    """Every command and Python block the README shows, in order, in one directory (the model
    comes from the cache the session's load filled)."""
    pysteer_command = [shutil.which("pysteer")] if shutil.which("pysteer") else [sys.executable, "-m", "pysteer.cli"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    ran = 0
    for kind, text in steps():
        if mirrored_by(kind, text):
            continue
        if kind == "python":
            argv, shown = [sys.executable, "-c", text], text.splitlines()[0]
        else:
            argv, shown = pysteer_command + shlex.split(text)[1:] + budget_for(text), text
        done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"README step failed: {shown}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
        assert "Traceback" not in done.stderr, f"{shown}: a traceback on stderr\n{done.stderr[-3000:]}"
        ran += 1
    assert ran >= 10
    assert (tmp_path / "lowercase_tuned" / "best_spec").is_dir() and (tmp_path / "my_steering").is_dir()
