"""Voxtrace's serving engine: `Engine(EngineConfig)` streams Qwen3-TTS audio for `SpeechRequest`s.

The names load lazily, so that a spawned stage worker (which imports `engine.runtime` and `engine.stages`) does not pay
for importing the whole engine.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Engine": "engine.engine",
    "EngineBusy": "engine.request",
    "Synthesis": "engine.engine",
    "EngineConfig": "engine.config",
    "AudioChunk": "engine.request",
    "EngineError": "engine.request",
    "RequestError": "engine.request",
    "SpeechRequest": "engine.request",
    "StageUnavailable": "engine.request",
    "Task": "engine.request",
    "ModelInfo": "engine.request",
    "SamplingParams": "engine.model.sampling",
    "SamplingError": "engine.model.sampling",
    # the ranges of the sampling settings, for a front end to offer and check
    "MAX_TOP_K": "engine.model.sampling",
    "REPETITION_PENALTY_RANGE": "engine.model.sampling",
    "TEMPERATURE_RANGE": "engine.model.sampling",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
