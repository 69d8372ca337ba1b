"""The memory plan: what each of an engine's processes will hold (weights, the talker's KV cache, working buffers, the
runtime), worked out from the checkpoint's configs before any weight is loaded. It sizes the KV cache from a budget
(`memory:` in the engine config) instead of a fixed shape, and refuses at start, with the numbers, a shape that
cannot fit, rather than letting the machine swap or the GPU run out in the middle of a run.

The KV cache is (max_num_seqs + 1) slots (one is the scratch slot of padding rows) x max_model_len positions, for
every talker layer, keys and values. The working buffers are the talker's per-slot state (trailing text rows, logits,
penalty history) and its largest step (a prefill of max_model_len positions, or a decode step's copy of one layer's
keys and values for every slot); Code2Wav's largest decode (an ICL reference prefix of `limits.max_ref_seconds`,
decoded in one go, or a batch of chunks); prompt prep's codec encoder on such a clip. Weights and the KV cache are
exact; activations are estimates, measured at the released sizes on CPU (within ~15%), and all counted at once, since
the three run on threads (or processes) of their own.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import psutil
import torch

from engine.config import ConfigError, EngineConfig
from engine.model.codec import SpeechTokenizer
from engine.model.loading import CheckpointFiles, Qwen3TTSNetwork, default_dtype

GiB = 2**30
# of the device's memory when `memory.utilization` is not given: a GPU is the engine's (as vLLM's default), RAM is
# shared with the OS, the browser and whatever else runs
DEFAULT_UTILIZATION = {"cpu": 0.7, "cuda": 0.9}
MAX_AUTO_SEQS = {"cpu": 8, "cuda": 32}  # the most talker slots picked when `max_num_seqs` is not given
AUTO_MODEL_LENS = (4096, 2048, 1024)  # max_model_len tried in turn when not given: the longest that fits
RUNTIME_BYTES = GiB // 2  # per process: Python, torch and our imports (0.43 GiB RSS on CPU), or a CUDA context
DECODER_VALUES_PER_SAMPLE = 1.2  # x decoder_dim: Code2Wav's live activations per output sample (13 MiB a frame, fp32)
ENCODER_VALUES_PER_SAMPLE = 4.6  # x num_filters: the codec encoder's per input sample (800 MiB for 30 s, fp32)
FRAME_RATE = 12.5  # codec frames per second


@dataclass(frozen=True)
class DeviceMemory:
    """The device's memory: all of it, and what this engine could have now (what is free plus what this process
    already holds)."""

    total: int
    free: int

    @classmethod
    def of(cls, device: str) -> DeviceMemory:
        if device.startswith("cuda"):
            dev = torch.device(device)
            free, total = torch.cuda.mem_get_info(dev)
            return cls(total, free + torch.cuda.memory_reserved(dev))
        ram = psutil.virtual_memory()
        return cls(ram.total, ram.available + psutil.Process().memory_info().rss)


@dataclass(frozen=True)
class ProcessMemory:
    """What one process holds, in bytes."""

    name: str
    weights: int
    kv_cache: int
    working: int
    runtime: int = RUNTIME_BYTES

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.working + self.runtime


@dataclass(frozen=True)
class MemoryPlan:
    """The talker's KV-cache shape and what every process holds with it; `describe()` is what start-up prints."""

    device: str
    dtype: str
    max_num_seqs: int
    max_model_len: int
    kv_slot_bytes: int  # one slot: max_model_len positions, every layer, keys and values
    processes: tuple[ProcessMemory, ...]
    budget_note: str  # the budget and where it comes from, in words
    working_note: str  # what the working buffers are, in words

    @property
    def total(self) -> int:
        return sum(p.total for p in self.processes)

    @property
    def kv_cache(self) -> int:
        return sum(p.kv_cache for p in self.processes)

    def apply(self, config: EngineConfig) -> EngineConfig:
        """`config` with the talker's max_num_seqs and max_model_len as planned."""
        talker = dataclasses.replace(config.talker, max_num_seqs=self.max_num_seqs, max_model_len=self.max_model_len)
        return dataclasses.replace(config, talker=talker)

    def describe(self) -> str:
        lines = [
            f"memory plan ({self.device}, {self.dtype}): {self.budget_note}",
            f"  talker KV cache: {self.max_num_seqs + 1} slots (max_num_seqs {self.max_num_seqs} + 1 scratch) x "
            f"max_model_len {self.max_model_len} = {gib(self.kv_cache)} ({gib(self.kv_slot_bytes)} a slot)",
            f"  working: {self.working_note}",
            f"  {'process':<16}{'weights':>11}{'KV cache':>11}{'working':>11}{'runtime':>11}{'total':>11}",
        ]
        for p in self.processes:
            cells = (p.weights, p.kv_cache, p.working, p.runtime, p.total)
            lines.append(f"  {p.name:<16}" + "".join(f"{gib(n):>11}" for n in cells))
        if len(self.processes) > 1:
            lines.append(f"  {'all':<16}{gib(self.total):>55}")
        return "\n".join(lines)


@dataclass(frozen=True)
class _Costs:
    """The byte counts a plan adds up, from the checkpoint's configs at the engine's dtype."""

    config: EngineConfig
    files: CheckpointFiles
    dtype: torch.dtype
    talker: int  # weights of each part
    speaker_encoder: int
    codec_encoder: int
    codec_decoder: int

    @classmethod
    def of(cls, config: EngineConfig, files: CheckpointFiles, dtype: torch.dtype) -> _Costs:
        with torch.device("meta"):  # shapes only: nothing is allocated
            network = Qwen3TTSNetwork(files.config)
            codec = SpeechTokenizer(files.speech_tokenizer_config)

        def nbytes(module: torch.nn.Module | None) -> int:  # cast_weights casts every floating tensor to `dtype`
            tensors = [] if module is None else module.state_dict().values()
            return sum(t.numel() * (dtype.itemsize if t.is_floating_point() else t.element_size()) for t in tensors)

        parts = (network.talker, network.speaker_encoder, codec.encoder, codec.decoder)
        return cls(config, files, dtype, *map(nbytes, parts))

    def kv_slot(self, model_len: int) -> int:
        t = self.files.config.talker_config
        return 2 * t.num_hidden_layers * t.num_key_value_heads * model_len * t.head_dim * self.dtype.itemsize

    def talker_working(self, seqs: int, model_len: int) -> int:
        t, e, slots = self.files.config.talker_config, self.dtype.itemsize, seqs + 1
        cp = t.code_predictor_config
        per_slot = model_len * t.hidden_size * e + t.vocab_size * 5 + 2 * t.hidden_size * e  # text rows, logits, ...
        predictor_cache = 2 * cp.num_hidden_layers * seqs * cp.num_key_value_heads * cp.num_code_groups * cp.head_dim
        qkv = (t.num_attention_heads + 2 * t.num_key_value_heads) * t.head_dim
        prefill = model_len * (4 * t.intermediate_size + 2 * qkv + 4 * t.hidden_size + t.vocab_size) * e
        attention = self.kv_slot(model_len) // t.num_hidden_layers * slots
        return slots * per_slot + predictor_cache * e + max(prefill, attention)

    def ref_frames(self) -> int:
        """The longest ICL reference prefix (Base checkpoints only)."""
        icl = self.files.config.tts_model_type == "base"
        return math.ceil(self.config.limits.max_ref_seconds * FRAME_RATE) if icl else 0

    def code2wav_frames(self) -> int:
        """The most frames one decode takes: a reference prefix, or a batch of the longest chunks."""
        chunking = self.config.chunking
        batch = self.config.code2wav.max_num_seqs * max(chunking.first_chunk_frames, chunking.chunk_frames)
        return max(self.ref_frames(), batch)

    def code2wav_working(self) -> int:
        st = self.files.speech_tokenizer_config
        per_frame = st.decode_upsample_rate * st.decoder_config.decoder_dim * DECODER_VALUES_PER_SAMPLE
        return int(self.code2wav_frames() * per_frame * self.dtype.itemsize)

    def prep_working(self) -> int:
        st = self.files.speech_tokenizer_config
        samples = self.ref_frames() * st.encode_downsample_rate
        filters = st.encoder_config.get("num_filters", 64)
        return int(samples * filters * ENCODER_VALUES_PER_SAMPLE * self.dtype.itemsize)

    def working_note(self, seqs: int, model_len: int) -> str:
        talker = f"talker {gib(self.talker_working(seqs, model_len))} (slot state, a {model_len}-position prefill)"
        frames = self.code2wav_frames()
        code2wav = f"code2wav {gib(self.code2wav_working())} (a decode of {frames} frames)"
        if frames == self.ref_frames():
            code2wav = code2wav[:-1] + f": a {self.config.limits.max_ref_seconds:g} s reference prefix)"
        parts = [talker, code2wav]
        if self.prep_working():
            parts.append(f"prep {gib(self.prep_working())} (the codec encoder on that clip)")
        return ", ".join(parts)

    def processes(self, seqs: int, model_len: int) -> tuple[ProcessMemory, ...]:
        """The engine's process (prep, and the `uni` stages) and each `mp` stage's worker, which loads its own part:
        the talker's with the speaker encoder, Code2Wav's with the codec encoder (as the loaders do now)."""
        kv = self.kv_slot(model_len) * (seqs + 1)
        talker = ProcessMemory(
            "talker worker", self.talker + self.speaker_encoder, kv, self.talker_working(seqs, model_len)
        )
        code2wav = ProcessMemory("code2wav worker", self.codec_encoder + self.codec_decoder, 0, self.code2wav_working())
        engine = ProcessMemory("engine", self.speaker_encoder + self.codec_encoder, 0, self.prep_working())
        workers = []
        for stage, worker, shared in (
            (self.config.talker, talker, self.speaker_encoder),
            (self.config.code2wav, code2wav, self.codec_encoder),
        ):
            if stage.executor != "uni":  # its own process: an `mp` worker or a `ray` actor
                workers.append(worker)
            else:  # in the engine's process, sharing the part prep uses
                engine = dataclasses.replace(
                    engine,
                    weights=engine.weights + worker.weights - shared,
                    kv_cache=engine.kv_cache + worker.kv_cache,
                    working=engine.working + worker.working,
                )
        return (engine, *workers)


def plan_memory(config: EngineConfig, files: CheckpointFiles, device: DeviceMemory | None = None) -> MemoryPlan:
    """The plan for `config` on `files`. The talker's max_num_seqs and max_model_len as given, checked against the
    budget; left out, the largest that fit the budget and what is free now (max_model_len first, then slots). Raises
    `ConfigError` naming the keys and the numbers when nothing fits."""
    kind = "cuda" if config.device.startswith("cuda") else "cpu"
    device = device or DeviceMemory.of(config.device)
    dtype = getattr(torch, config.dtype) if config.dtype else default_dtype(torch.device(config.device))
    costs = _Costs.of(config, files, dtype)
    memory, talker = config.memory, config.talker
    kv_limit = math.inf if memory.kv_cache_gb is None else memory.kv_cache_gb * GiB
    if memory.utilization is None and memory.kv_cache_gb is not None:
        budget, note = math.inf, f"the KV cache within memory.kv_cache_gb {memory.kv_cache_gb:g}"
    else:
        utilization = memory.utilization or DEFAULT_UTILIZATION[kind]
        budget = utilization * device.total
        note = f"budget {gib(budget)} = memory.utilization {utilization:g} x {gib(device.total)}"
    note += f"; {gib(device.free)} free now"
    given = talker.max_num_seqs is not None and talker.max_model_len is not None
    room = budget if given else min(budget, device.free)

    def plan(seqs: int, model_len: int) -> MemoryPlan:
        processes = costs.processes(seqs, model_len)
        working = costs.working_note(seqs, model_len)
        return MemoryPlan(config.device, str(dtype).removeprefix("torch."), seqs, model_len,
                          costs.kv_slot(model_len), processes, note, working)  # fmt: skip

    lens = (talker.max_model_len,) if talker.max_model_len else AUTO_MODEL_LENS
    seqs = (talker.max_num_seqs,) if talker.max_num_seqs else tuple(range(MAX_AUTO_SEQS[kind], 0, -1))
    for model_len in lens:
        for n in seqs:
            candidate = plan(n, model_len)
            if candidate.total <= room and candidate.kv_cache <= kv_limit:
                return candidate
    least = plan(seqs[-1], lens[-1])
    what = f"talker.max_num_seqs {least.max_num_seqs} x talker.max_model_len {least.max_model_len}"
    what = what if given else f"no talker shape fits, not even {what}:"
    if least.kv_cache > kv_limit:
        raise ConfigError(
            f"{what} need a {gib(least.kv_cache)} KV cache ({least.max_num_seqs + 1} slots with the scratch one), "
            f"over memory.kv_cache_gb {memory.kv_cache_gb:g}; lower talker.max_num_seqs or talker.max_model_len"
        )
    weights = sum(p.weights for p in least.processes)
    raise ConfigError(
        f"{what} need {gib(least.total)} (weights {gib(weights)}, KV cache {gib(least.kv_cache)}, working "
        f"{least.working_note}), over the {gib(room)} the engine may take ({note}). Lower talker.max_num_seqs or "
        "talker.max_model_len (or leave them out to have them picked), raise memory.utilization, pick a smaller "
        "dtype, or lower limits.max_ref_seconds"
    )


def gib(n: float) -> str:
    return f"{n / GiB:.2f} GiB"
