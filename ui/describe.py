"""One line about an engine config, as the page and the logs show it."""

from __future__ import annotations

from engine import EngineConfig


def describe(config: EngineConfig) -> str:
    model = config.model or f"tiny-{config.tiny_task}"
    return f"{model} · talker {config.talker.executor} · code2wav {config.code2wav.executor} · {config.device}"
