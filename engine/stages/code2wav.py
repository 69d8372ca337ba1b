"""Stage 1, Code2Wav: code frames -> 24 kHz audio, streamed per request and batched across requests.

The decoder is causal, so each request keeps its own `DecoderState` (sliding-window KV, conv tails) and decodes
only its new frames: the chunks it emits, joined, equal one-shot decoding of all its codes. `decode_chunk` needs
one frame count per call, so a step batches the head chunks of several requests that share the frame count of the
oldest waiting chunk (oldest first: no request starves; one chunk per request per batch: FIFO per request). With
`decode.batch_invariant` a decode holds one request, so a request's audio does not depend on what else is running.

ICL: the first chunk may carry the reference clip's codes (`prefix_codes`). They run first as a warm-up item whose
audio is dropped, so the request's audio is `decode(ref ++ codes)[len(ref) * 1920:]`. The official cut,
`icl_trim_start`, is that boundary or, for about 4 % of (ref, total) lengths, one sample earlier; which one depends on
the total frame count, unknown until the last chunk, while the first sample goes out with the first chunk. So only a
request whose first chunk is its last gets the official cut exactly (the reference's last sample leads its audio when
the cut falls early; never so for 1 or 2 generated frames, the default first chunk); a longer stream starts at the
boundary, one sample after the official output in those cases.
Warmed states are cached by the prefix's content, so a voice used again skips that decode; `WarmPrefix` fills the
cache ahead of the first request (as a request of its own that decodes the prefix and ends without output).
"""

from __future__ import annotations

import hashlib
import itertools
import logging
from collections import OrderedDict, deque
from dataclasses import dataclass, field

import torch
from torch import Tensor

from engine.config import DecodeConfig, StageConfig
from engine.model.codec import Code2Wav, DecoderState
from engine.model.prompt import icl_trim_start
from engine.stages.messages import (
    CANCELS_REMEMBERED,
    AudioOut,
    Cancel,
    CodeChunk,
    Failed,
    StageInput,
    StageOutput,
    WarmPrefix,
)
from telemetry import events

log = logging.getLogger(__name__)

INTEGER_CODES = (torch.int64, torch.int32)


@dataclass
class _Item:
    """One decode unit of a request: a chunk, or (`chunk` None) the ICL prefix that warms the state."""

    codes: Tensor  # (frames, num_quantizers) int64, on the host
    seq: int  # arrival order across all requests: the scheduling priority
    submitted_ns: int
    chunk: CodeChunk | None = None
    prefix_key: bytes | None = None  # warm-up items only: the prefix cache key


@dataclass
class _Warmed:
    """A decoded ICL prefix: the state its request continues from, and the last sample of its audio, which leads a
    one-chunk request's audio when the official cut falls a sample early."""

    state: DecoderState
    last_sample: Tensor  # (1,) float32


@dataclass
class _Request:
    items: deque[_Item] = field(default_factory=deque)
    state: DecoderState | None = None  # None: nothing decoded yet (the zero state)
    ref_frames: int = 0  # of the ICL prefix
    ref_last_sample: Tensor | None = None  # set once the prefix is decoded or adopted from the cache
    next_index: int = 0
    warm_only: bool = False  # a WarmPrefix: ends once its prefix is decoded


def _prefix_key(prefix: Tensor) -> bytes:
    return hashlib.blake2b(prefix.cpu().numpy().tobytes(), digest_size=16).digest()


class Code2WavStage:
    """The `Stage` of engine/stages/stage.py for the codec decoder. Inputs: `CodeChunk` (per request, in index order
    from 0) and `Cancel`; outputs: one `AudioOut` per chunk (float32 on the CPU), or one `Failed` per bad request."""

    name = "code2wav"

    def __init__(
        self,
        decoder: Code2Wav,
        stage: StageConfig,
        recorder: events.Recorder | None = None,
        prefix_cache_size: int = 16,
        decode: DecodeConfig | None = None,
    ) -> None:
        self.decoder = decoder.eval()
        self.max_num_seqs = stage.max_num_seqs
        self.decode = decode or DecodeConfig()
        self.recorder = events.get_recorder() if recorder is None else recorder
        self.prefix_cache_size = prefix_cache_size
        self.device = decoder.pre_conv.conv.weight.device
        self.samples_per_frame = decoder.total_upsample
        self.num_quantizers = decoder.cfg.num_quantizers
        self.codebook_size = decoder.cfg.codebook_size
        self._requests: dict[str, _Request] = {}
        self._pending: list[StageOutput] = []  # answers that need no decode (failures found on submit)
        self._dropped: OrderedDict[str, None] = OrderedDict()  # cancelled/failed: their late chunks are ignored
        self._prefix_cache: OrderedDict[bytes, _Warmed] = OrderedDict()  # LRU, batch-1 warmed states
        self._seq = itertools.count()
        with torch.inference_mode():
            self._zero_state = decoder.init_state(1)  # shared: decode_chunk never modifies its input state

    # --- the Stage protocol

    def submit(self, message: StageInput) -> None:
        if isinstance(message, Cancel):
            self._drop(message.request_id)
        elif isinstance(message, CodeChunk):
            self._take_chunk(message)
        elif isinstance(message, WarmPrefix):
            self._take_warm(message)
        else:
            raise TypeError(f"code2wav takes CodeChunk, WarmPrefix and Cancel, got {type(message).__name__}")

    def has_work(self) -> bool:
        return bool(self._pending) or any(req.items for req in self._requests.values())

    def step(self) -> list[StageOutput]:
        out, self._pending = self._pending, []
        ready: list[tuple[int, str]] = []  # (seq of the head item, request id)
        for rid in list(self._requests):
            self._answer_heads_without_decoding(rid, out)
            req = self._requests.get(rid)
            if req is not None and req.items:
                ready.append((req.items[0].seq, rid))
        if ready:
            out += self._decode(self._pick_batch(ready))
        held = sum(not req.warm_only for req in self._requests.values())
        self.recorder.counter(events.IN_FLIGHT, held, track=events.CODE2WAV)  # requests whose state it keeps
        return out

    # --- intake

    def _take_chunk(self, chunk: CodeChunk) -> None:
        rid = chunk.request_id
        if rid in self._dropped:  # a late chunk of a cancelled or failed request
            if chunk.is_last:
                del self._dropped[rid]
            return
        req = self._requests.setdefault(rid, _Request())
        problem = self._check(chunk, req.next_index)
        if problem is not None:
            self._pending.append(self._fail(rid, problem))
            return
        req.next_index += 1
        now = events.now_ns()
        codes = chunk.codes.to(torch.int64)
        if chunk.prefix_codes is not None and chunk.prefix_codes.shape[0] and codes.shape[0]:
            prefix = chunk.prefix_codes.to(torch.int64).contiguous()
            req.ref_frames = prefix.shape[0]
            req.items.append(_Item(prefix, next(self._seq), now, None, _prefix_key(prefix)))
        req.items.append(_Item(codes, next(self._seq), now, chunk))

    def _take_warm(self, warm: WarmPrefix) -> None:
        """Queue the prefix's decode unless it is empty, unfit, cached or queued already. An unfit one is dropped
        without an answer: no request waits for it, and the request that brings the same codes gets the error."""
        if self._codes_problem("prefix_codes", warm.prefix_codes) is not None or not warm.prefix_codes.shape[0]:
            return
        prefix = warm.prefix_codes.to(torch.int64).contiguous()
        key = _prefix_key(prefix)
        rid = f"warm:{key.hex()}"
        if key in self._prefix_cache or rid in self._requests:
            return
        item = _Item(prefix, next(self._seq), events.now_ns(), None, key)
        self._requests[rid] = _Request(deque([item]), warm_only=True)

    def _check(self, chunk: CodeChunk, expected_index: int) -> str | None:
        """Why a chunk cannot be decoded, found before it can fail a batch (or trip a CUDA assert)."""
        if chunk.index != expected_index:
            return f"code2wav: chunk {chunk.index} arrived, expected chunk {expected_index}"
        if chunk.prefix_codes is not None and chunk.index != 0:
            return f"code2wav: prefix_codes on chunk {chunk.index}; only the first chunk may carry them"
        for what, codes in (("codes", chunk.codes), ("prefix_codes", chunk.prefix_codes)):
            if codes is not None and (problem := self._codes_problem(what, codes)) is not None:
                return problem
        return None

    def _codes_problem(self, what: str, codes: Tensor) -> str | None:
        if codes.dim() != 2 or codes.shape[1] != self.num_quantizers or codes.dtype not in INTEGER_CODES:
            return (
                f"code2wav: {what} must be integer (frames, {self.num_quantizers}), "
                f"got {codes.dtype} {tuple(codes.shape)}"
            )
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size):
            return f"code2wav: {what} out of range [0, {self.codebook_size})"
        return None

    def _drop(self, rid: str) -> None:
        """Forget a request (cancelled or failed) and remember its id so that its late chunks are ignored."""
        self._requests.pop(rid, None)
        self._dropped[rid] = None
        while len(self._dropped) > CANCELS_REMEMBERED:
            self._dropped.popitem(last=False)

    def _fail(self, rid: str, message: str) -> Failed:
        self._drop(rid)
        return Failed(rid, message)

    # --- scheduling

    def _answer_heads_without_decoding(self, rid: str, out: list[StageOutput]) -> None:
        """Empty chunks are answered at once, and a prefix already in the cache is adopted instead of decoded."""
        req = self._requests[rid]
        while req.items:
            head = req.items[0]
            if head.chunk is not None and head.codes.shape[0] == 0:
                req.items.popleft()
                out.append(AudioOut(rid, head.chunk.index, torch.zeros(0), 0, head.chunk.is_last))
                if head.chunk.is_last:
                    del self._requests[rid]
                    return
            elif head.prefix_key is not None and head.prefix_key in self._prefix_cache:
                self._prefix_cache.move_to_end(head.prefix_key)
                warmed = self._prefix_cache[head.prefix_key]
                req.state, req.ref_last_sample = warmed.state, warmed.last_sample
                req.items.popleft()
                if req.warm_only:  # warmed meanwhile by a request with the same voice
                    del self._requests[rid]
                    return
            else:
                return

    def _pick_batch(self, ready: list[tuple[int, str]]) -> list[str]:
        """The oldest waiting chunk sets the frame count; others of that length join, oldest first. A prefix is
        decoded once: a second item of the same voice (a request and its voice's warm-up, queued together) waits a
        step and adopts the first one's state, rather than being decoded beside it (a batch of two gives other bits
        than one here, so the request's audio would depend on which came first)."""
        ready.sort()
        frames = self._requests[ready[0][1]].items[0].codes.shape[0]
        group, prefixes = [], set()
        for _, rid in ready:
            item = self._requests[rid].items[0]
            if item.codes.shape[0] == frames and (item.prefix_key is None or item.prefix_key not in prefixes):
                group.append(rid)
                prefixes.add(item.prefix_key)
        return group[: 1 if self.decode.batch_invariant else self.max_num_seqs]

    # --- decoding

    def _decode(self, group: list[str]) -> list[StageOutput]:
        reqs = [self._requests[rid] for rid in group]
        items = [req.items[0] for req in reqs]
        frames = items[0].codes.shape[0]
        start = events.now_ns()
        requests = [rid for rid, req in zip(group, reqs, strict=True) if not req.warm_only]
        warming = {"warming": len(group) - len(requests)} if len(requests) < len(group) else {}
        try:
            with self.recorder.span(
                events.CODE2WAV_DECODE, events.CODE2WAV, batch_size=len(group), frames=frames, requests=requests,
                **warming,
            ):  # fmt: skip
                audio, states = self._run(
                    torch.stack([item.codes for item in items]),
                    [self._zero_state if r.state is None else r.state for r in reqs],
                )
        except Exception:  # an error fails its request, never the stage
            if len(group) == 1:
                log.exception("request %s: code2wav: the decode failed", group[0])
                return [self._fail(group[0], "code2wav: the decode failed")]
            return [out for rid in group for out in self._decode([rid])]  # find the row that fails
        out: list[StageOutput] = []
        for i, (rid, req, state) in enumerate(zip(group, reqs, states, strict=True)):
            item = req.items.popleft()
            req.state = state
            if item.chunk is None:  # a warmed ICL prefix: keep the state, drop the audio but its last sample
                req.ref_last_sample = audio[i, -1:].clone()
                self._cache_prefix(item.prefix_key, _Warmed(state, req.ref_last_sample))
                if req.warm_only:
                    del self._requests[rid]
                continue
            self.recorder.record_span(events.QUEUE_WAIT, events.CODE2WAV, item.submitted_ns, start, request=rid)
            samples = self._official_start(req, item.chunk, audio[i].clone())
            out.append(AudioOut(rid, item.chunk.index, samples, frames, item.chunk.is_last))
            if item.chunk.is_last:
                del self._requests[rid]
        return out

    @torch.inference_mode()
    def _run(self, codes: Tensor, states: list[DecoderState]) -> tuple[Tensor, list[DecoderState]]:
        """One batched decode: (B, T, Q) codes continuing each row's state -> audio (B, T * 1920) on the CPU."""
        state = states[0] if len(states) == 1 else DecoderState.cat(states)
        audio, state = self.decoder.decode_chunk(codes.to(self.device, non_blocking=True), state)
        return audio.float().cpu(), [_compact(s) for s in state.split()]

    def _official_start(self, req: _Request, chunk: CodeChunk, samples: Tensor) -> Tensor:
        """Lead a one-chunk ICL request with the reference's last sample where the official cut falls one sample
        before the frame boundary: only a first chunk that is also the last knows the total the cut depends on."""
        if chunk.index != 0 or not chunk.is_last or req.ref_last_sample is None:
            return samples
        total = req.ref_frames + chunk.codes.shape[0]
        boundary = req.ref_frames * self.samples_per_frame
        if icl_trim_start(req.ref_frames, total, total * self.samples_per_frame) == boundary:
            return samples
        return torch.cat([req.ref_last_sample, samples])

    def _cache_prefix(self, key: bytes | None, warmed: _Warmed) -> None:
        if key is None or self.prefix_cache_size == 0:
            return
        self._prefix_cache[key] = warmed
        self._prefix_cache.move_to_end(key)
        while len(self._prefix_cache) > self.prefix_cache_size:
            self._prefix_cache.popitem(last=False)


def _compact(state: DecoderState) -> DecoderState:
    """Copy the conv tails: `decode_chunk` returns them as views of the chunk's full activations (megabytes at the
    real size), which a request waiting for its next chunk would otherwise keep alive."""
    return DecoderState(state.pos, state.keys, state.values, [t.clone() for t in state.tails])
