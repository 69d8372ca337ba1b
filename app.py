"""Voxtrace entry point: the Gradio app and the HTTP API on one port, or one synthesis from the command line.

python app.py                                            # the app, with the embedded tiny model (noise, real timings)
python app.py --model ./Qwen3-TTS-12Hz-0.6B-Base         # a checkpoint folder (or a Hub id, downloaded when online)
python app.py --config configs/tiny-mp-mp.yaml --host 0.0.0.0 --allowed-hosts tts.example.com --port 7860
python app.py synth --text "Hello." --out hello.wav      # one request, no server (16-bit PCM; --float: 32-bit float)
python app.py synth --model ./Qwen3-TTS-12Hz-0.6B-Base --ref-audio me.wav --ref-text "What I said." --text "Hi."
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import sys
import tempfile
import time
from pathlib import Path

import soundfile as sf
import torch

from engine.config import ConfigError, EngineConfig
from ui.edge import LOOPBACK_HOSTS, EdgeLimits

REFERENCE_MAX_SECONDS = 30.0


def parse_serve_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Serve the Voxtrace app and HTTP API (`app.py synth --help`: one request).")
    p.add_argument("--model", help="checkpoint folder or Hub id; default: the embedded tiny random model")
    p.add_argument("--config", type=Path, help="engine config YAML (configs/); --model overrides its model")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    p.add_argument("--port", type=int, default=7860, help="0: any free port")
    p.add_argument(
        "--allowed-hosts",
        help="comma-separated Host header names to answer (any port), or '*' for any; default: the loopback names "
        "(127.0.0.1, localhost, [::1]); required when --host is beyond this machine",
    )
    p.add_argument(
        "--remote-servers",
        help="comma-separated speech server URLs that Compare and Benchmark may send requests to, or '*' for any; "
        "default: any while the app answers only loopback names, else none",
    )
    p.add_argument(
        "--grace-s",
        type=seconds,
        default=10.0,
        help="after SIGTERM/SIGINT: seconds requests get before they are cut, and each engine to close",
    )
    return p.parse_args(argv)


def seconds(text: str) -> float:
    value = float(text)
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text} is not a number of seconds >= 0")
    return value


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def allowed_hosts(args: argparse.Namespace) -> tuple[str, ...]:
    """The Host allowlist: as given, else the loopback names; a server bound beyond loopback must be told which
    names it answers to (or '*'), since the loopback names alone would refuse every client that reaches it."""
    if args.allowed_hosts is not None:
        names = tuple(name.strip().lower() for name in args.allowed_hosts.split(",") if name.strip())
        if not names:
            raise SystemExit("--allowed-hosts is empty: name the Host headers to answer, or '*' for any")
        return names
    if not is_loopback(args.host):
        raise SystemExit(
            f"--host {args.host} opens the server beyond this machine: say which Host names it answers to with "
            "--allowed-hosts (e.g. --allowed-hosts tts.example.com,10.0.0.5), or --allowed-hosts '*' for any"
        )
    return LOOPBACK_HOSTS


def remote_servers(args: argparse.Namespace, hosts: tuple[str, ...]) -> tuple[str, ...]:
    """The remote servers a page may name (`ui.remotes`): as given, else any for an app only this machine's visitors
    reach (they could reach those servers themselves), else none."""
    if args.remote_servers is not None:
        return tuple(url.strip() for url in args.remote_servers.split(",") if url.strip())
    return ("*",) if hosts == LOOPBACK_HOSTS else ()


def engine_config(args: argparse.Namespace) -> EngineConfig:
    """The serving engine's config; its close is bounded by the server's grace."""
    config = EngineConfig.from_yaml(args.config) if args.config else EngineConfig()
    if args.model:
        device = config.device if args.config else "cuda" if torch.cuda.is_available() else "cpu"
        config = dataclasses.replace(config, model=args.model, device=device)
    return dataclasses.replace(config, close_grace_s=args.grace_s)


def serve(argv: list[str]) -> int:
    args = parse_serve_args(argv)  # before the app's imports (gradio: seconds), so that --help answers at once
    from ui.app import create_app
    from ui.describe import describe
    from ui.remotes import RemoteServers
    from ui.server import ServeConfig
    from ui.server import serve as serve_app
    from ui.state import AppState

    hosts = allowed_hosts(args)
    try:
        remotes = RemoteServers(remote_servers(args, hosts))
    except ValueError as exc:
        raise SystemExit(f"--remote-servers: {exc}") from None
    served = ServeConfig(host=args.host, port=args.port, grace_s=args.grace_s, edge=EdgeLimits(allowed_hosts=hosts))
    try:
        config = engine_config(args)
        if config.model is None:
            print("No --model: the embedded tiny model with RANDOM weights. The audio is noise; the timings are real.",
                  file=sys.stderr)  # fmt: skip
        print(f"Starting the engine ({describe(config)}) …", file=sys.stderr)
        t0 = time.perf_counter()
        app_state = AppState.start(config, remotes=remotes)  # talker sizes left out: what fits this machine (the plan)
    except ConfigError as exc:  # a bad key, or a shape that does not fit in memory: refused before any weight loads
        raise SystemExit(f"The engine config cannot be used: {exc}") from None
    print(app_state.engines.serving.memory.describe(), file=sys.stderr)
    print(f"Engine ready in {time.perf_counter() - t0:.1f} s. The app is at /, the API at POST /v1/audio/speech, "
          "health at /health and /ready.", file=sys.stderr)  # fmt: skip
    which = "any Host (--allowed-hosts '*')" if "*" in hosts else f"Host {', '.join(hosts)} (any port)"
    print(f"Answering requests for {which}; others get 400. Remote servers for Compare and Benchmark: "
          f"{remotes.describe()}.", file=sys.stderr)  # fmt: skip
    serve_app(create_app(app_state), served, on_shutdown=app_state.close)
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
    p.add_argument(
        "--max-new-tokens",
        type=int,
        help="frame limit (80 ms each); default: 2048, or with the tiny model about the text's spoken length",
    )
    p.add_argument("--out", type=Path, default=Path("out.wav"))
    p.add_argument("--float", action="store_true", help="write 32-bit float samples (default: 16-bit PCM)")
    return p.parse_args(argv)


def synth(argv: list[str] | None = None) -> int:
    args = parse_args(argv)  # before the model's imports (transformers: seconds), so that --help answers at once
    from engine.model.audio import load_reference_audio
    from engine.model.qwen3_tts import Qwen3TTS, SynthesisInput
    from engine.model.sampling import SamplingParams
    from engine.model.tiny import build_checkpoint
    from engine.prep import spoken_frames

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
    if tts.model_type == "custom_voice" and speaker is None:
        speaker = tts.speakers[0]
        print(f"No --speaker given: using {speaker!r} (choices: {', '.join(tts.speakers)}).", file=sys.stderr)
    request = SynthesisInput(
        text=args.text,
        language=args.language,
        speaker=speaker,
        instruct=args.instruct,
        voice=voice,
    )
    max_new_tokens = args.max_new_tokens
    if max_new_tokens is None:  # random weights never draw EOS: the engine's rule for them (`spoken_frames`)
        max_new_tokens = spoken_frames(args.text) if args.model is None else 2048
    params = SamplingParams(
        max_new_tokens=max_new_tokens, do_sample=not args.greedy, subtalker_dosample=not args.greedy
    )
    start = time.perf_counter()
    result = tts.synthesize(request, params, seed=args.seed)
    elapsed = time.perf_counter() - start
    sf.write(args.out, result.wav, result.sample_rate, subtype="FLOAT" if args.float else "PCM_16")
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
    try:
        return serve(argv)
    except KeyboardInterrupt:  # SIGINT, after the server has closed everything
        return 130


if __name__ == "__main__":
    sys.exit(main())
