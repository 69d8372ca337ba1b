"""Building a stage where it will run: in the engine's process from the loaded model (`uni`), or inside a worker
process from the checkpoint folder (`mp`), so that a worker loads only the weights its stage uses."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.config import ChunkingConfig, DecodeConfig, StageConfig
from engine.model.loading import find_checkpoint, load_network, load_speech_tokenizer
from engine.model.qwen3_tts import Qwen3TTS
from engine.stages.code2wav import Code2WavStage
from engine.stages.stage import Stage
from engine.stages.talker import TalkerStage


@dataclass(frozen=True)
class StageSpec:
    """Everything a worker needs to build its stage; picklable (plain values only)."""

    kind: str  # "talker" or "code2wav"
    checkpoint: str
    device: str
    dtype: str | None
    stage: StageConfig
    chunking: ChunkingConfig
    decode: DecodeConfig


def build_in_worker(spec: StageSpec) -> Stage:
    """The `mp` factory: load the stage's part of the checkpoint in this (worker) process."""
    files = find_checkpoint(spec.checkpoint)
    dtype = getattr(torch, spec.dtype) if spec.dtype else None
    if spec.kind == "talker":
        network = load_network(files, spec.device, dtype)
        return TalkerStage(network.talker, files.config, spec.stage, spec.chunking, decode=spec.decode)
    return Code2WavStage(load_speech_tokenizer(files, spec.device, dtype).decoder, spec.stage, decode=spec.decode)


def build_from_model(model: Qwen3TTS, spec: StageSpec) -> Stage:
    """The `uni` factory: the stage shares the engine's loaded weights."""
    if spec.kind == "talker":
        return TalkerStage(model.talker, model.config, spec.stage, spec.chunking, decode=spec.decode)
    return Code2WavStage(model.speech_tokenizer.decoder, spec.stage, decode=spec.decode)
