"""The checkpoint every benchmark runs on, set up one way: a random one built in a temporary folder (`--size tiny` or
`mid`: the released configs, smaller; `0.6B` or `1.7B`: the released configs as they are), or a real one found on
disk or in the Hub cache (`--checkpoint`). A benchmark asks for the task it times; a real checkpoint of another type
is refused by name before anything is timed.

`python -m profiling.bench.checkpoint OUT --task base --size 1.7B --device cuda --dtype bfloat16` builds one into a
folder that an engine config can name (scripts/gpu_check.sh does, for its sweeps at the released sizes).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from engine.model.config import Qwen3TTSConfig
from engine.model.loading import Qwen3TTSNetwork, find_checkpoint
from engine.model.sampling import SamplingParams
from engine.model.tiny import RELEASE_CONFIGS, SIZES, build_checkpoint, randomize_
from engine.request import Task

GREEDY = SamplingParams(do_sample=False, subtalker_dosample=False)  # random weights: greedy codes are reproducible
RELEASED = ("0.6B", "1.7B")  # random weights at a released size
ALL_SIZES = (*sorted(SIZES), *RELEASED)


@dataclass(frozen=True)
class BenchCheckpoint:
    path: Path
    name: str  # "tiny", "mid", "1.7B", or the real checkpoint's folder name: what the printed figures are of


def add_checkpoint_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", choices=ALL_SIZES, default="tiny", help="the random checkpoint to build")
    parser.add_argument("--checkpoint", help="a real checkpoint (a folder or a Hub id) instead of a random one")


@contextmanager
def bench_checkpoint(args: argparse.Namespace, task: Task) -> Iterator[BenchCheckpoint]:
    """The checkpoint `args` name, serving `task`; a built one is deleted on exit."""
    if args.checkpoint:
        files = find_checkpoint(args.checkpoint)
        if files.config.tts_model_type != task.model_type:
            raise SystemExit(
                f"--checkpoint {args.checkpoint}: a {files.config.tts_model_type!r} checkpoint; this benchmark times "
                f"{task} and needs a {task.model_type!r} one"
            )
        yield BenchCheckpoint(files.root, files.root.name)
        return
    with tempfile.TemporaryDirectory(prefix="voxtrace-bench-") as tmp:
        print(f"building the {args.size} {task.model_type} checkpoint ...", file=sys.stderr)
        path = build_random(Path(tmp) / args.size, task.model_type, args.size)
        yield BenchCheckpoint(path, args.size)


def release_config(model_type: str, size: str) -> Path:
    """The released config.json of `model_type` at `size` ("1.7B" base: Qwen3-TTS-12Hz-1.7B-Base.json)."""
    path = RELEASE_CONFIGS / f"Qwen3-TTS-12Hz-{size}-{model_type.title().replace('_', '')}.json"
    if not path.exists():
        released = sorted(p.stem.removeprefix("Qwen3-TTS-12Hz-") for p in RELEASE_CONFIGS.glob("Qwen3-TTS-12Hz-*B-*"))
        raise SystemExit(f"no released {size} {model_type} model; released: {', '.join(released)}")
    return path


def build_random(
    out: Path, model_type: str, size: str, device: str = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0
) -> Path:
    """A random checkpoint in the official layout. tiny and mid: the tiny builder's. A released size: the tiny
    builder's mid checkpoint (its codec is the released one, and it writes every other file) with the network
    swapped for the released config's, drawn on `device` (a GPU draws 2 B weights in a second; a CPU core takes a
    minute) and written in `dtype` (bfloat16 halves the file and its load)."""
    if size in SIZES:
        return build_checkpoint(out, task=model_type, size=size, seed=seed)
    raw = json.loads(release_config(model_type, size).read_text())
    build_checkpoint(out, task=model_type, size="mid", seed=seed)
    with torch.device(device):  # randomize_ draws with the default device's generator
        network = Qwen3TTSNetwork(Qwen3TTSConfig.from_dict(raw))
        randomize_(network, torch.Generator(device).manual_seed(seed))
    state = {name: t.detach().to(dtype).cpu().contiguous() for name, t in network.state_dict().items()}
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(raw, indent=2))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build a random checkpoint for an engine config to name.")
    parser.add_argument("out", type=Path)
    parser.add_argument("--task", choices=[task.model_type for task in Task], default="base")
    parser.add_argument("--size", choices=ALL_SIZES, default="tiny")
    parser.add_argument("--device", default="cpu", help="where a released size's weights are drawn")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="a released size's")
    args = parser.parse_args(argv)
    path = build_random(args.out, args.task, args.size, args.device, getattr(torch, args.dtype))
    print(f"wrote a random {args.size} {args.task} checkpoint to {path}")


if __name__ == "__main__":
    main()
