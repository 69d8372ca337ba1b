"""Parity with the official qwen-tts 0.1.1 on the same tiny checkpoints: the contract of our model code.

Codes must be bit-identical (greedy and seeded sampling, every task and text mode, a run that stops on EOS, bfloat16
weights as well as float32); the voice prompt's x-vector and reference codes equal; the decoded waveform equal within
1e-4.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from engine.model.audio import load_reference_audio
from engine.model.qwen3_tts import Qwen3TTS, SynthesisInput, VoicePrompt
from engine.model.sampling import SamplingParams
from tests.parity.cases import CASES

GENERATE_CASES = [c for c in CASES if c["task"] != "voice_prompt"]
PROMPT_CASES = [c for c in CASES if c["task"] == "voice_prompt"]


class Models:
    """Our model per (checkpoint, dtype) of the cases, loaded when a case first asks."""

    def __init__(self, checkpoints: dict[str, Path]) -> None:
        self.checkpoints = checkpoints
        self.loaded: dict[tuple[str, str], Qwen3TTS] = {}

    def __getitem__(self, case: dict) -> Qwen3TTS:
        key = (case["checkpoint"], case.get("dtype", "float32"))
        if key not in self.loaded:
            self.loaded[key] = Qwen3TTS.from_pretrained(self.checkpoints[key[0]], dtype=getattr(torch, key[1]))
        return self.loaded[key]


@pytest.fixture(scope="module")
def models(checkpoints) -> Models:
    return Models(checkpoints)


def voice_prompt(model: Qwen3TTS, case: dict, clips: dict[str, Path]) -> VoicePrompt:
    clip = load_reference_audio(clips[case["ref"]].read_bytes(), max_seconds=30)
    return model.create_voice_prompt(clip, case.get("ref_text"), case.get("x_vector_only", False))


def run_ours(model: Qwen3TTS, case: dict, clips: dict[str, Path]) -> tuple[torch.Tensor, np.ndarray]:
    voice = voice_prompt(model, case, clips) if "ref" in case else None
    request = SynthesisInput(
        text=case["text"],
        language=case.get("language", "auto"),
        speaker=case.get("speaker"),
        instruct=case.get("instruct"),
        voice=voice,
        non_streaming_mode=case.get("non_streaming_mode"),
    )
    params = SamplingParams(**{**vars(model.sampling_defaults), **case["gen"]})
    codes = model.generate_codes(request, params, seed=case.get("seed"))
    return codes, model.decode(codes, voice)


@pytest.mark.parametrize("case", GENERATE_CASES, ids=[c["name"] for c in GENERATE_CASES])
def test_codes_and_audio_match_official(case: dict, models, official, clips) -> None:
    expected = official[f"{case['checkpoint']}/{case['name']}"]
    codes, wav = run_ours(models[case], case, clips)
    assert codes.shape[0] > 0
    assert torch.equal(codes, expected["codes"]), "codes differ from the official generate"
    ref_wav = expected["wav"].numpy()
    assert wav.shape == ref_wav.shape
    np.testing.assert_allclose(wav, ref_wav, rtol=0, atol=1e-4)


def test_eos_case_stops_before_the_frame_limit(models, official, clips) -> None:
    case = next(c for c in CASES if c["name"] == "stops_on_eos")
    codes = official[f"base_eos/{case['name']}"]["codes"]
    assert 0 < codes.shape[0] < case["gen"]["max_new_tokens"] - 1  # stopped by EOS, not by the limit


def test_greedy_cases_run_to_the_frame_limit(official) -> None:
    # without an EOS boost the random model never stops: max_new_tokens N gives N-1 frames, as in the official
    for case in GENERATE_CASES:
        if case["checkpoint"] != "base_eos" and case.get("seed") is None:
            assert (
                official[f"{case['checkpoint']}/{case['name']}"]["codes"].shape[0] == case["gen"]["max_new_tokens"] - 1
            )


@pytest.mark.parametrize("case", PROMPT_CASES, ids=[c["name"] for c in PROMPT_CASES])
def test_voice_prompt_matches_official(case: dict, models, official, clips) -> None:
    expected = official[f"{case['checkpoint']}/{case['name']}"]
    voice = voice_prompt(models[case], case, clips)
    assert torch.equal(voice.ref_codes, expected["ref_code"])
    torch.testing.assert_close(voice.x_vector.float(), expected["x_vector"], rtol=0, atol=1e-6)
