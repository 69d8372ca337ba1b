"""An engine in words: one line about its config, as the page and the logs show it, and the model name it serves."""

from __future__ import annotations

from engine import Engine, EngineConfig


def describe(config: EngineConfig) -> str:
    model = config.model or f"tiny-{config.tiny_task}"
    return f"{model} · talker {config.talker.executor} · code2wav {config.code2wav.executor} · {config.device}"


def model_id(engine: Engine) -> str:
    """The served model's name: the Hub id or folder name it was loaded from (the tiny model: `tiny-<task>`)."""
    if engine.config.model is None:
        return f"tiny-{engine.config.tiny_task}"
    name = engine.config.model
    return name.rstrip("/").rsplit("/", 1)[-1] if name.startswith(("/", ".", "~")) else name
