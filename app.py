"""Voxtrace entry point: the Gradio app and the HTTP API on one port, or one synthesis from the command line.

python app.py                                            # the app, with the embedded tiny model (noise, real timings)
python app.py --model ./Qwen3-TTS-12Hz-0.6B-Base         # a checkpoint folder (or a Hub id, downloaded when online)
python app.py --config configs/tiny-mp-mp.yaml --host 0.0.0.0 --port 7860
python app.py synth --text "Hello." --out hello.wav      # one request, no server
python app.py synth --model ./Qwen3-TTS-12Hz-0.6B-Base --ref-audio me.wav --ref-text "What I said." --text "Hi."
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import soundfile as sf
import torch

from engine.config import EngineConfig
from engine.model.audio import load_reference_audio
from engine.model.qwen3_tts import Qwen3TTS, SynthesisInput
from engine.model.sampling import SamplingParams
from engine.model.tiny import build_checkpoint

REFERENCE_MAX_SECONDS = 30.0


def parse_serve_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Serve the Voxtrace app and HTTP API (`app.py synth --help`: one request).")
    p.add_argument("--model", help="checkpoint folder or Hub id; default: the embedded tiny random model")
    p.add_argument("--config", type=Path, help="engine config YAML (configs/); --model overrides its model")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    p.add_argument("--port", type=int, default=7860)
    return p.parse_args(argv)


def engine_config(args: argparse.Namespace) -> EngineConfig:
    config = EngineConfig.from_yaml(args.config) if args.config else EngineConfig()
    if args.model:
        device = config.device if args.config else "cuda" if torch.cuda.is_available() else "cpu"
        config = dataclasses.replace(config, model=args.model, device=device)
    return config


def serve(argv: list[str]) -> int:
    from ui.app import create_app
    from ui.server import serve as serve_app
    from ui.state import EngineManager, describe

    args = parse_serve_args(argv)
    config = engine_config(args)
    if config.model is None:
        print("No --model: the embedded tiny model with RANDOM weights. The audio is noise; the timings are real.",
              file=sys.stderr)  # fmt: skip
    print(f"Starting the engine ({describe(config)}) …", file=sys.stderr)
    t0 = time.perf_counter()
    manager = EngineManager(config)
    url = f"http://{args.host}:{args.port}"
    print(f"Engine ready in {time.perf_counter() - t0:.1f} s. App: {url}/  API: POST {url}/v1/audio/speech",
          file=sys.stderr)  # fmt: skip
    try:
        serve_app(create_app(manager), host=args.host, port=args.port)
    finally:
        manager.close()
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="app.py synth", description="Synthesise speech with Qwen3-TTS (Voxtrace).")
    p.add_argument("--model", help="checkpoint folder or Hub id; default: the embedded tiny random model")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="default: fp32 on CPU, bf16 on CUDA")
    p.add_argument("--text", required=True)
    p.add_argument("--language", default="auto")
    p.add_argument("--speaker", help="custom voice: a built-in speaker")
    p.add_argument("--instruct", help="custom voice / voice design: a description of the voice or style")
    p.add_argument("--ref-audio", type=Path, help="voice clone: the reference clip (wav/flac/ogg)")
    p.add_argument("--ref-text", help="voice clone: its transcript (omit for x-vector-only cloning)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--greedy", action="store_true", help="no sampling (deterministic without a seed)")
    p.add_argument("--max-new-tokens", type=int, default=2048, help="frame limit (80 ms each)")
    p.add_argument("--out", type=Path, default=Path("out.wav"))
    return p.parse_args(argv)


def synth(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    model_path = args.model
    if model_path is None:
        task = "base" if args.ref_audio else "voice_design" if args.instruct and not args.speaker else "custom_voice"
        model_path = build_checkpoint(Path(tempfile.mkdtemp(prefix="voxtrace-tiny-")), task=task)
        print(
            f"No --model given: using the embedded tiny {task} model with RANDOM weights. "
            "The audio is noise; the timings are real.",
            file=sys.stderr,
        )
    dtype = getattr(torch, args.dtype) if args.dtype else None
    tts = Qwen3TTS.from_pretrained(model_path, device=args.device, dtype=dtype)
    voice = None
    if args.ref_audio is not None:
        clip = load_reference_audio(args.ref_audio.read_bytes(), max_seconds=REFERENCE_MAX_SECONDS)
        voice = tts.create_voice_prompt(clip, ref_text=args.ref_text, x_vector_only=args.ref_text is None)
    speaker = args.speaker
    if tts.task == "custom_voice" and speaker is None:
        speaker = tts.speakers[0]
        print(f"No --speaker given: using {speaker!r} (choices: {', '.join(tts.speakers)}).", file=sys.stderr)
    request = SynthesisInput(
        task=tts.task,
        text=args.text,
        language=args.language,
        speaker=speaker,
        instruct=args.instruct,
        voice=voice,
    )
    params = SamplingParams(
        max_new_tokens=args.max_new_tokens, do_sample=not args.greedy, subtalker_dosample=not args.greedy
    )
    start = time.perf_counter()
    result = tts.synthesize(request, params, seed=args.seed)
    elapsed = time.perf_counter() - start
    sf.write(args.out, result.wav, result.sample_rate)
    seconds = len(result.wav) / result.sample_rate
    print(
        f"wrote {args.out}: {seconds:.2f} s of audio ({len(result.codes)} frames) in {elapsed:.2f} s "
        f"(RTF {elapsed / max(seconds, 1e-9):.2f})"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["synth"]:
        return synth(argv[1:])
    return serve(argv)


if __name__ == "__main__":
    sys.exit(main())
