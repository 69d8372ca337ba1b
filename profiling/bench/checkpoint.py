"""The checkpoint every benchmark runs on, set up one way: a random one built in a temporary folder (`--size tiny` or
`mid`: the released configs, smaller), or a real one found on disk or in the Hub cache (`--checkpoint`). A benchmark
asks for the task it times; a real checkpoint of another type is refused by name before anything is timed."""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from engine.model.loading import find_checkpoint
from engine.model.sampling import SamplingParams
from engine.model.tiny import SIZES, build_checkpoint
from engine.request import Task

GREEDY = SamplingParams(do_sample=False, subtalker_dosample=False)  # random weights: greedy codes are reproducible


@dataclass(frozen=True)
class BenchCheckpoint:
    path: Path
    name: str  # "tiny", "mid", or the real checkpoint's folder name: what the printed figures are of


def add_checkpoint_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny", help="the random checkpoint to build")
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
        path = build_checkpoint(Path(tmp) / args.size, task=task.model_type, size=args.size)
        yield BenchCheckpoint(path, args.size)
