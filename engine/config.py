"""The engine config: one YAML file = one deployment. Every key is checked when the config is built, so a typo or a
bad value fails at start-up with a message naming the key, not deep inside a run."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from engine.request import Task

PLACEMENT_STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")
EXECUTORS = ("uni", "mp", "ray")  # the one list: the config, the app's choices and the tuner's knobs read it
SAMPLING_MODES = ("fast", "official")
DTYPES = ("float32", "bfloat16", "float16")
TINY_TASKS = tuple(task.model_type for task in Task)  # the tiny builder builds one checkpoint per model type
T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or value that cannot be used; the message names the key."""


@dataclass
class RayPlacement:
    """Where a `ray` stage's actor runs: the resources it reserves on the cluster (Ray's own units: CPUs, GPUs, custom
    resources) and, optionally, the node (its IP address) it must run on."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    resources: dict[str, float] = field(default_factory=dict)
    node: str | None = None

    def __post_init__(self) -> None:
        for name in ("num_cpus", "num_gpus"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
                raise ConfigError(f"{name} must be >= 0, got {value!r}")
        for key, value in self.resources.items():
            if not isinstance(key, str) or isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ConfigError(f"resources must map names to amounts >= 0, got {key!r}: {value!r}")
        if self.node is not None and (not isinstance(self.node, str) or not self.node.strip()):
            raise ConfigError(f"node must be a node's IP address, got {self.node!r}")


@dataclass
class StageConfig:
    """How one stage runs: in the engine's process (`uni`, a thread), its own worker process (`mp`), or a Ray actor
    (`ray`, placed by `ray`)."""

    executor: str = "uni"
    # talker: requests in the running batch; code2wav: requests decoded in one batch. In an EngineConfig the talker's
    # is None unless given: the memory plan (`engine.memory`) picks it, with max_model_len, to fit the budget
    max_num_seqs: int | None = 8
    threads: int = 1  # torch threads of this stage (CPU), so `mp` does not oversubscribe a small machine
    max_model_len: int | None = 4096  # talker: KV-cache positions per request (prompt + generated frames)
    ring_mb: int = 32  # mp: shared-memory ring per direction (2 per mp stage; mind a container's /dev/shm size)
    # a dead worker (or uni stage thread) is replaced at once; a failed attempt is retried after restart_backoff_s,
    # then twice that, ... until restart_max_s after the death (it must cover a start-up: the model's load). Then the
    # stage stays down. Meanwhile its requests fail fast with StageUnavailable.
    restart_backoff_s: float = 0.5
    restart_max_s: float = 300.0
    ray: RayPlacement = field(default_factory=RayPlacement)  # ray: the actor's resources and node

    def __post_init__(self) -> None:
        if self.executor not in EXECUTORS:
            raise ConfigError(f"executor must be one of {EXECUTORS}, got {self.executor!r}")
        if self.max_num_seqs is not None and self.max_num_seqs < 1:
            raise ConfigError(f"max_num_seqs must be >= 1, got {self.max_num_seqs}")
        if self.threads < 1:
            raise ConfigError(f"threads must be >= 1, got {self.threads}")
        if self.ring_mb < 1:
            raise ConfigError(f"ring_mb must be >= 1, got {self.ring_mb}")
        if self.max_model_len is not None and self.max_model_len < 16:
            raise ConfigError(f"max_model_len must be >= 16, got {self.max_model_len}")
        for name in ("restart_backoff_s", "restart_max_s"):
            if not 0 < getattr(self, name) < math.inf:
                raise ConfigError(f"{name} must be a number of seconds > 0, got {getattr(self, name)}")


@dataclass
class ChunkingConfig:
    """Frames per code chunk handed from the talker to Code2Wav: a small first chunk for fast first audio, then (with
    `ramp`) each chunk as long as all the chunks before it, up to `chunk_frames` (2, 2, 4, 8, 8, ...). The ramp keeps
    the first seams fed: at real time or faster a chunk is made while the audio before it plays, where a full steady
    chunk right after a small first one arrives after that one has played out (a gap the listener hears)."""

    first_chunk_frames: int = 2
    chunk_frames: int = 8
    ramp: bool = True

    def __post_init__(self) -> None:
        if not 1 <= self.first_chunk_frames <= 300 or not 1 <= self.chunk_frames <= 300:
            raise ConfigError("first_chunk_frames and chunk_frames must be between 1 and 300")


@dataclass
class LimitsConfig:
    """What a single request may ask for, and how far ahead of its listener it may run."""

    max_text_chars: int = 2000
    max_instruct_chars: int = 500
    max_ref_text_chars: int = 2000  # the reference clip's transcript
    max_ref_seconds: float = 30.0
    max_new_tokens: int = 4096
    credits: int = 4  # chunks a request may have in flight to its listener before its talker row pauses
    max_waiting: int = 256  # requests queued for the talker beyond the running batch

    def __post_init__(self) -> None:
        for name in (
            "max_text_chars",
            "max_instruct_chars",
            "max_ref_text_chars",
            "max_new_tokens",
            "credits",
            "max_waiting",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"limits.{name} must be >= 1, got {getattr(self, name)}")
        if self.max_ref_seconds <= 0:
            raise ConfigError(f"limits.max_ref_seconds must be > 0, got {self.max_ref_seconds}")


@dataclass
class DecodeConfig:
    """How the stages step: the shapes they run at, how the talker samples, and CUDA graphs.

    `fast` samples every row of a step in one batched call with randomness keyed by (seed, step, code position), so a
    row's draws do not depend on its neighbours; `official` draws per row from a `torch.Generator` seeded like the
    `qwen-tts` package (seeded parity with it). Greedy decoding is the same in both. `batch_invariant` runs every
    step at one shape (the largest batch bucket, the whole KV capacity; Code2Wav at fixed shapes too), so a seeded
    request gives the same bytes whatever else runs beside it, at the price of computing padding rows.
    `cuda_graphs` captures each batch bucket's step at start-up on CUDA (ignored on CPU)."""

    sampling_mode: str = "fast"
    batch_invariant: bool = False
    cuda_graphs: bool = True
    batch_buckets: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16, 32, 64])  # capped by max_num_seqs

    def __post_init__(self) -> None:
        if self.sampling_mode not in SAMPLING_MODES:
            raise ConfigError(f"decode.sampling_mode must be one of {SAMPLING_MODES}, got {self.sampling_mode!r}")
        buckets = self.batch_buckets
        if not buckets or any(not isinstance(b, int) or isinstance(b, bool) or b < 1 for b in buckets):
            raise ConfigError(f"decode.batch_buckets must be a list of whole numbers >= 1, got {buckets!r}")
        if sorted(set(buckets)) != buckets:
            raise ConfigError(f"decode.batch_buckets must be increasing without repeats, got {buckets!r}")


@dataclass
class MemoryConfig:
    """The budget the memory plan (`engine.memory`) sizes the talker's KV cache from.

    `utilization`: the fraction of the device's memory (RAM on CPU, the GPU's on CUDA) that all of the engine's
    processes together may hold: weights, KV cache, working buffers, runtime. None: 0.7 on CPU (shared with the OS
    and other programs), 0.9 on CUDA (as vLLM's `gpu_memory_utilization`). `kv_cache_gb`: the talker's KV cache
    sized to this many GiB instead, the rest unbounded unless `utilization` is given too. Talker `max_num_seqs` and
    `max_model_len` left out are picked to fit (and what is free now); given, they are checked, and refused at
    start when they do not fit."""

    utilization: float | None = None
    kv_cache_gb: float | None = None

    def __post_init__(self) -> None:
        for name, low, high in (("utilization", 0.0, 1.0), ("kv_cache_gb", 0.0, math.inf)):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not low < value <= high:
                raise ConfigError(f"memory.{name} must be a number > {low:g} and <= {high:g}, got {value!r}")


@dataclass
class RayClusterConfig:
    """The Ray cluster `ray` stages run on: `address` (or the RAY_ADDRESS variable) names a running one; with
    neither, the engine starts a local one for itself (with `num_cpus` CPUs, None: all of this machine's, and an
    object store of `object_store_mb`) and stops it when the last engine using it closes. `placement_strategy`
    reserves each replica's `ray` stages together in one placement group (`runtime.ray_placement`) before any of them
    starts, waiting at most `placement_timeout_s` for the cluster to have room (None: each actor waits for room on its
    own, up to the stage's start timeout)."""

    address: str | None = None
    namespace: str = "voxtrace"
    num_cpus: int | None = None
    object_store_mb: int = 256
    placement_strategy: str | None = "PACK"  # or SPREAD, STRICT_PACK, STRICT_SPREAD (Ray's placement strategies)
    placement_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        if self.placement_strategy is not None and self.placement_strategy not in PLACEMENT_STRATEGIES:
            strategies = ", ".join(PLACEMENT_STRATEGIES)
            raise ConfigError(f"ray.placement_strategy must be one of {strategies}, got {self.placement_strategy!r}")
        if not 0 < self.placement_timeout_s < math.inf:
            raise ConfigError(f"ray.placement_timeout_s must be > 0, got {self.placement_timeout_s}")
        if self.num_cpus is not None and self.num_cpus < 1:
            raise ConfigError(f"ray.num_cpus must be >= 1, got {self.num_cpus}")
        if self.object_store_mb < 80:  # Ray refuses a store below 75 MiB
            raise ConfigError(f"ray.object_store_mb must be >= 80, got {self.object_store_mb}")
        if not self.namespace:
            raise ConfigError("ray.namespace must not be empty")


@dataclass
class EngineConfig:
    model: str | None = None  # checkpoint folder or Hub id; None: the embedded tiny random model
    tiny_task: str = "base"  # which tiny model to build when `model` is None
    device: str = "cpu"
    dtype: str | None = None  # None: float32 on CPU, bfloat16 on CUDA
    talker: StageConfig = field(default_factory=lambda: StageConfig(max_num_seqs=None, max_model_len=None))
    code2wav: StageConfig = field(default_factory=lambda: StageConfig(max_num_seqs=4))
    chunking: ChunkingConfig = field(default_factory=ChunkingConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    ray: RayClusterConfig = field(default_factory=RayClusterConfig)
    voice_cache_mb: float = 64.0
    close_grace_s: float = 10.0  # Engine.close: how long in-flight work may take to stop before workers are killed
    direct_link: bool = True  # mp-mp: code chunks go talker -> code2wav over their own ring (False: via the engine)
    replicas: int = 1  # copies of the whole pipeline behind the one engine (`ray` stages each on their own resources)

    def __post_init__(self) -> None:
        if self.tiny_task not in TINY_TASKS:
            raise ConfigError(f"tiny_task must be one of {TINY_TASKS}, got {self.tiny_task!r}")
        if self.dtype is not None and self.dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ConfigError(f"device must be 'cpu' or 'cuda[:N]', got {self.device!r}")
        if self.code2wav.max_num_seqs is None:  # only the talker's shape is planned from memory
            raise ConfigError("code2wav.max_num_seqs must be a whole number >= 1, got None")
        if self.voice_cache_mb < 0:
            raise ConfigError(f"voice_cache_mb must be >= 0, got {self.voice_cache_mb}")
        if not 1 <= self.replicas <= 64:
            raise ConfigError(f"replicas must be between 1 and 64, got {self.replicas}")
        if not 0 <= self.close_grace_s < math.inf:
            raise ConfigError(f"close_grace_s must be a number of seconds >= 0, got {self.close_grace_s}")

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> EngineConfig:
        return _build(cls, raw, "")

    @classmethod
    def from_yaml(cls, path: str | Path) -> EngineConfig:
        return load_yaml(path, "config", cls.from_dict)


def load_yaml(path: str | Path, what: str, build: Callable[[dict[str, Any]], T]) -> T:
    """`build` of a YAML file's top-level mapping (an empty file is {}). An unreadable file, one that is not a mapping,
    and every `ConfigError` of `build` are refused with the file's name in front: the one reading of the engine
    config and the Tune workload."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read the {what}: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys")
    try:
        return build(raw)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def _build(cls: type, raw: dict[str, Any], where: str, base: Any = None) -> Any:
    """Nested dataclass from a dict, refusing unknown keys and wrong value types by name; keys left out keep `base`'s
    values (a section: EngineConfig's default for it, so a talker section without max_num_seqs leaves it to the
    memory plan), else the class's defaults."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where or 'config'} must be a mapping, got {type(raw).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(where + k for k in unknown)}; known: {', '.join(fields)}")
    kwargs = {}
    defaults = cls()
    for name, value in raw.items():
        default = getattr(defaults, name)
        if dataclasses.is_dataclass(default):  # a section (talker, talker.ray, ...): built key by key
            section = getattr(base, name) if base is not None else default
            kwargs[name] = _build(type(default), value, f"{where}{name}.", section)
            continue
        if value is None and base is not None and getattr(base, name) is None:  # null: as the default, to be picked
            kwargs[name] = value
            continue
        if (
            default is not None
            and not isinstance(value, type(default))
            and not (isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool))
        ):
            raise ConfigError(f"{where}{name} must be of type {type(default).__name__}, got {value!r}")
        kwargs[name] = value
    try:
        return cls(**kwargs) if base is None else dataclasses.replace(base, **kwargs)
    except ConfigError as exc:
        raise ConfigError(f"{where}{exc}" if where and not str(exc).startswith(where) else str(exc)) from exc
