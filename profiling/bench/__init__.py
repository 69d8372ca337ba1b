"""The benchmarks, as one command with a subcommand each:

    python -m profiling.bench model   # our model loop against the official qwen-tts: ms per frame, and the ratio
    python -m profiling.bench engine  # the serving engine against its ceiling (the stages in one thread) and the peer
    python -m profiling.bench voice   # first audio of a new cloned voice: cold against prepared
    python -m profiling.bench sweep   # a concurrency sweep over the prompt set, against an engine config or a URL
    python -m profiling.bench events  # what event recording costs per call, on and off
    python -m profiling.bench ipc     # what moving data between the stages costs, per path (star, direct, in process)
    python -m profiling.bench memory  # start-up at real size: load time and peak RSS per process, per executor pair

`python -m profiling.bench SUBCOMMAND --help` lists its flags. model, engine and voice run on the checkpoint that
`checkpoint.py` sets up (built at `--size`, or a real one with `--checkpoint`), and so do ipc and memory; sweep runs an
engine config (whose `model: null` is the tiny model) or a server; events needs none. The benchmark's prompt set is
`prompt_set.py`.
"""

from __future__ import annotations

import argparse
import importlib
import shlex
import sys
from collections.abc import Sequence
from typing import Any

COMMANDS = ("model", "engine", "voice", "sweep", "events", "ipc", "memory")


def main(argv: Sequence[str] | None = None) -> Any:
    """Run one subcommand; returns what it measured. Each subcommand module has `add_arguments` and `run`."""
    parser = argparse.ArgumentParser(
        prog="python -m profiling.bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    subcommands = parser.add_subparsers(dest="command", required=True, metavar="{" + ",".join(COMMANDS) + "}")
    for name in COMMANDS:
        module = importlib.import_module(f"{__name__}.{name}")
        sub = subcommands.add_parser(
            name,
            help=module.__doc__.splitlines()[0],
            description=module.__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(sub)
        sub.set_defaults(run=module.run)
    args = parser.parse_args(argv)
    result = vars(args).pop("run")(args)
    command = shlex.join(argv if argv is not None else sys.argv[1:])
    print(f"\nreproduce: python -m profiling.bench {command}")
    return result
