"""Runs the official qwen-tts package (in .venv-ref) once per session on the tiny checkpoints.

Starting the official package costs seconds, so every case of every checkpoint goes through one process; the tests
then compare our outputs against the saved results. Without .venv-ref these tests skip, unless
VOXTRACE_REQUIRE_REFERENCE=1 (as in CI), where a missing reference is a failure.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.parity.cases import CASES

ROOT = Path(__file__).resolve().parents[2]
REFERENCE_PYTHON = ROOT / ".venv-ref" / "bin" / "python"


@pytest.fixture(scope="session")
def official(checkpoints, clips, tmp_path_factory) -> dict[str, dict]:
    """Official outputs keyed by '<checkpoint>/<case>'."""
    if not REFERENCE_PYTHON.exists():
        message = f"the reference environment {REFERENCE_PYTHON.parent.parent} is missing (bash scripts/setup.sh)"
        if os.environ.get("VOXTRACE_REQUIRE_REFERENCE") == "1":
            pytest.fail(message)
        pytest.skip(message)
    runs: dict[str, list[dict]] = {}
    for case in CASES:
        job_case = dict(case)
        if "ref" in case:
            job_case["ref_audio"] = str(clips[case["ref"]])
        runs.setdefault(case["checkpoint"], []).append(job_case)
    work = tmp_path_factory.mktemp("official")
    job = work / "job.json"
    job.write_text(json.dumps({"runs": [{"checkpoint": str(checkpoints[k]), "cases": v} for k, v in runs.items()]}))
    out = work / "out.pt"
    proc = subprocess.run(
        [str(REFERENCE_PYTHON), str(ROOT / "reference" / "official_runner.py"), str(job), str(out)],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=900,
    )
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-5000:])
        pytest.fail(f"the official runner failed (exit {proc.returncode}); its stderr is above")
    return torch.load(out, weights_only=False)
