"""The README's quick start as a new user meets it: two commands, one that starts the app and one that runs the tests
(the one CI runs), each setting up only what is missing (scripts/setup.sh, stamped by what it installed from)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
APP, TEST = "scripts/app", "scripts/test"

# `python3 -m venv DIR` for setup.sh: a "venv" whose pip writes its arguments to $PIP_LOG (and fails when $PIP_FAILS)
FAKE_PYTHON = """#!/usr/bin/env bash
set -e
[ "$1 $2" = "-m venv" ]
mkdir -p "$3/bin"
printf '#!/bin/sh\\n' >"$3/bin/python"
printf '#!/bin/sh\\necho "%s $*" >>"$PIP_LOG"\\n[ -z "$PIP_FAILS" ]\\n' "$3" >"$3/bin/pip"
chmod +x "$3/bin/python" "$3/bin/pip"
"""


def commands(script: str) -> list[str]:
    """A shell text's command lines, comments and blank lines dropped."""
    lines = (line.split("#", 1)[0].strip() for line in script.splitlines())
    return [line for line in lines if line]


def quick_start() -> list[str]:
    """The commands of the first bash block under the README's "## Quick start"."""
    section = (ROOT / "README.md").read_text().split("\n## Quick start\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block is not None, "the quick start has no bash block"
    return commands(block[1])


def test_the_quick_start_is_two_commands_and_ci_runs_the_second() -> None:
    assert quick_start() == [APP, TEST]
    for script in (APP, TEST):
        assert os.access(ROOT / script, os.X_OK), f"{script} is not executable"
    ci = commands((ROOT / ".ci/run").read_text())
    assert ci[-1] == TEST  # exactly the README's test command, last
    assert any("apt-get install" in line and "chromium" in line for line in ci)  # for the browser test
    assert not any("pytest" in line or "setup.sh" in line for line in ci)  # no second way in


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """What setup.sh reads, in a folder of its own, with a fake python3 on the way."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts/setup.sh", tmp_path / "scripts/setup.sh")
    for name in ("requirements.txt", "requirements-ref.txt"):
        shutil.copy(ROOT / name, tmp_path / name)
    fake = tmp_path / "fake-python3"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    return tmp_path


def setup(checkout: Path, **env: str) -> tuple[int, list[str]]:
    """Run setup.sh in `checkout`: its exit status and the pip calls it made ("ENV ARGS...")."""
    log = checkout / "pip.log"
    log.unlink(missing_ok=True)
    base = {"PATH": os.environ["PATH"], "PYTHON": str(checkout / "fake-python3"), "PIP_LOG": str(log)}
    proc = subprocess.run(["bash", "scripts/setup.sh"], cwd=checkout, env={**base, **env}, capture_output=True)
    return proc.returncode, log.read_text().splitlines() if log.exists() else []


def test_setup_installs_what_is_missing_and_nothing_else(checkout: Path) -> None:
    rc, calls = setup(checkout)
    assert rc == 0 and [c.split()[0] for c in calls] == [".venv", ".venv-ref", ".venv-ref"]
    assert "-r requirements.txt" in calls[0] and "qwen-tts==0.1.1" in calls[2]
    assert setup(checkout) == (0, [])  # all there: no pip at all
    with open(checkout / "requirements.txt", "a") as f:
        f.write("tqdm\n")
    assert [c.split()[0] for c in setup(checkout)[1]] == [".venv"]  # only what changed
    (checkout / ".venv-ref/.setup-stamp").unlink()
    assert setup(checkout, VOXTRACE_SKIP_REFERENCE="1") == (0, [])  # the app's setup leaves the reference out
    rc, calls = setup(checkout, PIP_FAILS="1")
    assert rc != 0 and len(calls) == 1  # a failed install stops there, and is not stamped:
    assert [c.split()[0] for c in setup(checkout)[1]] == [".venv-ref", ".venv-ref"]


def test_the_app_command_runs_app_py_and_installs_nothing_when_set_up() -> None:
    env = {**os.environ, "VOXTRACE_SKIP_REFERENCE": "1"}
    subprocess.run(["bash", "scripts/setup.sh"], cwd=ROOT, env=env, check=True)  # a no-op after scripts/test's own
    proc = subprocess.run([ROOT / APP, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "Serve the Voxtrace app" in proc.stdout and "--model" in proc.stdout  # app.py's own help, passed through
    assert "setup:" not in proc.stderr  # nothing installed


if __name__ == "__main__":
    raise SystemExit(pytest.main([__file__, "-q"]))
