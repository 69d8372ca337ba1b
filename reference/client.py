"""Calling the official package from the project's environment: one subprocess in .venv-ref per batch of runs."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
REFERENCE_PYTHON = ROOT / ".venv-ref" / "bin" / "python"


class ReferenceUnavailable(RuntimeError):
    """The reference environment is not installed (bash scripts/setup.sh makes it)."""


def run_official(runs: list[dict], threads: int = 1, timeout: float = 1800) -> dict[str, dict]:
    """Run `reference/official_runner.py` on `runs` ([{"checkpoint": DIR, "cases": [...]}, ...]) and return its
    results keyed by '<checkpoint folder name>/<case name>'."""
    if not REFERENCE_PYTHON.exists():
        raise ReferenceUnavailable(f"the reference environment {REFERENCE_PYTHON.parents[1]} is missing")
    with tempfile.TemporaryDirectory(prefix="voxtrace-official-") as work:
        job, out = Path(work) / "job.json", Path(work) / "out.pt"
        job.write_text(json.dumps({"runs": runs}))
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "VOXTRACE_THREADS": str(threads)}
        proc = subprocess.run(
            [str(REFERENCE_PYTHON), str(ROOT / "reference" / "official_runner.py"), str(job), str(out)],
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"the official runner failed (exit {proc.returncode}):\n{proc.stderr[-5000:]}")
        return torch.load(out, weights_only=False)
