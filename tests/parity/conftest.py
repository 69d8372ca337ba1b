"""Runs the official qwen-tts package (in .venv-ref) once per session on the tiny checkpoints.

Starting the official package costs seconds, so every case of every checkpoint goes through one process; the tests
then compare our outputs against the saved results. Without .venv-ref these tests skip, unless
VOXTRACE_REQUIRE_REFERENCE=1 (as in CI), where a missing reference is a failure.
"""

from __future__ import annotations

import os

import pytest

from reference.client import ReferenceUnavailable, run_official
from tests.parity.cases import CASES


@pytest.fixture(scope="session")
def official(checkpoints, clips) -> dict[str, dict]:
    """Official outputs keyed by '<checkpoint>/<case>'."""
    runs: dict[tuple[str, str], list[dict]] = {}
    for case in CASES:
        job_case = {**case, "ref_audio": str(clips[case["ref"]])} if "ref" in case else dict(case)
        runs.setdefault((case["checkpoint"], case.get("dtype", "float32")), []).append(job_case)
    try:
        return run_official(
            [{"checkpoint": str(checkpoints[k]), "dtype": dtype, "cases": v} for (k, dtype), v in runs.items()]
        )
    except ReferenceUnavailable as exc:
        if os.environ.get("VOXTRACE_REQUIRE_REFERENCE") == "1":
            pytest.fail(str(exc))
        pytest.skip(str(exc))
