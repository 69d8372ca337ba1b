"""The config space Tune searches: a table of knobs, each a dotted key of `EngineConfig` with the values worth trying
and the profiler's signals that explain its effect (names in `profiling.evidence.SIGNALS`). Adding a knob is one line
in `KNOBS`; its key is checked against `EngineConfig` when a space is built.

    points = candidate_points(EngineConfig(), space(), max_candidates=12)   # the default first
    config = apply(EngineConfig(), points[3]); config_yaml(config)         # loads back with EngineConfig.from_yaml
"""

from __future__ import annotations

import dataclasses
import itertools
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from engine.config import EXECUTORS, ConfigError, EngineConfig


@dataclass(frozen=True)
class Knob:
    key: str  # dotted path into EngineConfig
    values: tuple[Any, ...]  # tried by default
    signals: tuple[str, ...]  # what the profiler shows about it (profiling.evidence.SIGNALS)


# `ray` is not tried by default (each trial would start actors on a cluster): a workload's `space:` may name it
LOCAL_EXECUTORS = tuple(e for e in EXECUTORS if e != "ray")
KNOBS: tuple[Knob, ...] = (
    Knob("talker.executor", LOCAL_EXECUTORS, ("talker_busy_pct", "transfer_ms_per_request", "cpu_percent")),
    Knob("code2wav.executor", LOCAL_EXECUTORS, ("code2wav_busy_pct", "talker_busy_pct", "transfer_ms_per_request")),
    Knob("talker.max_num_seqs", (4, 8, 16, 32), ("talker_batch_mean", "talker_queue_p99_ms")),
    Knob("code2wav.max_num_seqs", (1, 4, 8), ("code2wav_batch_mean", "code2wav_busy_pct")),
    Knob("chunking.first_chunk_frames", (1, 2, 4), ("ttfa_p99_ms", "underrun_p99_ms")),
    Knob("chunking.chunk_frames", (4, 8, 16), ("code2wav_decodes_per_request", "underrun_p99_ms")),
    Knob("limits.credits", (2, 4, 8), ("talker_paused_pct", "underrun_p99_ms")),
)
# against a remote server only the client's side can change
CLIENT_KNOBS: tuple[Knob, ...] = (Knob("concurrency", (1, 2, 4, 8, 16, 32), ()),)


def get(config: Any, key: str) -> Any:
    for part in key.split("."):
        config = getattr(config, part)
    return config


def apply(config: EngineConfig, values: Mapping[str, Any]) -> EngineConfig:
    """`config` with each dotted key set, every section re-checked (a bad value raises ConfigError naming it)."""
    for key, value in values.items():
        config = _replace(config, key.split("."), value, key)
    return config


def _replace(obj: Any, path: list[str], value: Any, key: str) -> Any:
    if not dataclasses.is_dataclass(obj) or path[0] not in {f.name for f in dataclasses.fields(obj)}:
        raise ConfigError(f"unknown knob {key!r}")
    inner = value if len(path) == 1 else _replace(getattr(obj, path[0]), path[1:], value, key)
    try:
        return dataclasses.replace(obj, **{path[0]: inner})
    except ConfigError as exc:
        raise ConfigError(f"{key}: {exc}") from exc


def space(knobs: Sequence[Knob] = KNOBS, only: Mapping[str, Sequence[Any]] | None = None) -> dict[str, tuple]:
    """Knob key -> values: the table's, or `only` (a workload's `space:`), whose keys must be knobs of the table."""
    table = {k.key: k.values for k in knobs}
    if only is None:
        return table
    unknown = sorted(set(only) - set(table))
    if unknown:
        raise ConfigError(f"unknown knob(s) {', '.join(unknown)}; known: {', '.join(table)}")
    return {key: tuple(values) for key, values in only.items()}


def candidate_points(
    base: Any, knobs: Mapping[str, Sequence[Any]], max_candidates: int = 16, seed: int = 0
) -> list[dict[str, Any]]:
    """The base config's own values first; then every one-knob change of it (each knob's effect alone, which is also
    what the evidence compares); then seeded random combinations up to `max_candidates`. Too many one-knob changes
    for `max_candidates` are sampled."""
    default = {key: get(base, key) for key in knobs}
    singles = [{**default, key: v} for key, values in knobs.items() for v in values if v != default[key]]
    rng = random.Random(seed)
    if len(singles) > max_candidates - 1:
        singles = rng.sample(singles, max_candidates - 1)
    points = [default, *singles]
    grid = [dict(zip(knobs, combo, strict=True)) for combo in itertools.product(*knobs.values())]
    rest = [p for p in grid if p not in points]
    return points + rng.sample(rest, min(len(rest), max_candidates - len(points)))


def config_yaml(config: EngineConfig, header: str = "") -> str:
    """The config as a YAML file `app.py --config` takes; `header` lines become comments at the top."""
    comments = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines())
    return comments + yaml.safe_dump(dataclasses.asdict(config), sort_keys=False, allow_unicode=True)
