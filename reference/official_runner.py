"""Run the official qwen-tts package on a checkpoint and save what it produced, for the parity tests.

Runs in the reference environment (.venv-ref), never in the project's:
    .venv-ref/bin/python reference/official_runner.py JOB.json OUT.pt
JOB.json: {"runs": [{"checkpoint": DIR, "cases": [{"name": ..., "task": ..., ...}, ...]}, ...]}; OUT.pt maps
"<checkpoint folder name>/<case name>" to the case's outputs. Each case calls the official public API exactly as a user
would; the talker codes are captured on their way out of `model.generate`.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from official_env import import_qwen_tts  # noqa: E402


def run_case(tts, case: dict) -> dict:
    captured: list[torch.Tensor] = []
    inner = tts.model.generate

    timings: list[float] = []

    def recording_generate(*args, **kwargs):
        start = time.perf_counter()
        codes, hiddens = inner(*args, **kwargs)
        timings.append(time.perf_counter() - start)
        captured.extend(c.clone() for c in codes)
        return codes, hiddens

    tts.model.generate = recording_generate
    try:
        task, gen = case["task"], dict(case.get("gen", {}))
        if case.get("seed") is not None:
            torch.manual_seed(case["seed"])
        if task == "voice_prompt":
            (item,) = tts.create_voice_clone_prompt(
                ref_audio=case["ref_audio"],
                ref_text=case.get("ref_text"),
                x_vector_only_mode=case.get("x_vector_only", False),
            )
            out = {"x_vector": item.ref_spk_embedding.float().cpu()}
            if item.ref_code is not None:
                out["ref_code"] = item.ref_code.cpu()
            return out
        if task == "tokenize":
            return {"ids": [tts.processor(text=t, return_tensors="pt")["input_ids"][0] for t in case["texts"]]}
        if task == "decode":
            wavs, _ = tts.model.speech_tokenizer.decode([{"audio_codes": torch.tensor(case["codes"])}])
            return {"wav": torch.from_numpy(wavs[0])}
        if task == "voice_clone":
            wavs, _ = tts.generate_voice_clone(
                text=case["text"],
                language=case.get("language", "Auto"),
                ref_audio=case["ref_audio"],
                ref_text=case.get("ref_text"),
                x_vector_only_mode=case.get("x_vector_only", False),
                non_streaming_mode=case.get("non_streaming_mode", False),
                **gen,
            )
        elif task == "custom_voice":
            wavs, _ = tts.generate_custom_voice(
                text=case["text"],
                speaker=case["speaker"],
                language=case.get("language", "Auto"),
                instruct=case.get("instruct"),
                non_streaming_mode=case.get("non_streaming_mode", True),
                **gen,
            )
        elif task == "voice_design":
            wavs, _ = tts.generate_voice_design(
                text=case["text"],
                instruct=case["instruct"],
                language=case.get("language", "Auto"),
                non_streaming_mode=case.get("non_streaming_mode", True),
                **gen,
            )
        else:
            raise ValueError(f"unknown task {task!r}")
        return {"codes": captured[0].cpu(), "wav": torch.from_numpy(wavs[0]), "generate_seconds": timings[0]}
    finally:
        tts.model.generate = inner


def main(job_path: str, out_path: str) -> None:
    import_qwen_tts()
    from qwen_tts import Qwen3TTSModel

    torch.set_num_threads(int(os.environ.get("VOXTRACE_THREADS", "1")))
    results = {}
    for run in json.loads(Path(job_path).read_text())["runs"]:
        tts = Qwen3TTSModel.from_pretrained(run["checkpoint"], dtype=getattr(torch, run.get("dtype", "float32")))
        for case in run["cases"]:
            start = time.perf_counter()
            result = run_case(tts, case)
            result["seconds"] = time.perf_counter() - start
            results[f"{Path(run['checkpoint']).name}/{case['name']}"] = result
    torch.save(results, out_path)


if __name__ == "__main__":
    main(*sys.argv[1:3])
