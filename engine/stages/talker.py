"""Stage 0, the talker: prompts in, code frames out in chunks, with continuous batching.

Each `step` admits waiting jobs into free KV-cache slots (a prefill each, at most `max_prefills_per_step`, so a burst
of arrivals delays the running rows by a bounded amount), then runs one decode step for every row that may run:
code 0 per row, codes 1..15 from the code predictor for the whole batch, the next talker input built on the device,
and the talker's decode step at each row's own position. Rows sit in arbitrary cache slots at different lengths; a
finished or cancelled request frees its slot at once.

The decode step works over static shapes. A request's settings, seed, position, trailing text rows and last logits
are written once, at admission, into per-slot device tensors (`slots.SlotTable`); a step reads only those, gathered by
slot index, and the sampled codes are the only thing read back, once per step. The batch is padded up to a bucket
(`decode.batch_buckets`, capped by `max_num_seqs`) with rows of a scratch slot, so the step runs at a few shapes only:
one CUDA graph each (`graphs.StepGraphs`). With `decode.batch_invariant` every step runs at the largest bucket over the
whole KV capacity, so a row's arithmetic, and with `fast` sampling its draws, do not depend on its neighbours.
`decode.sampling_mode: fast` samples all rows in one batched call keyed by (seed, step, code position)
(`engine.model.keyed_sampling`); `official` draws per row from a `torch.Generator`, as `generate_codes` does, and runs
at the exact batch size.

The per-step rules are those of `engine.model.generate.generate_codes`: at concurrency 1 in `official` mode the frames
are equal to it bit for bit (greedy ones in either mode). A row that drew EOS still rides through the predictor and
the decode step of that step (its outputs are dropped): we learn of the EOS only at the one read-back at the end. So
does a row's last frame, whose decode step feeds no draw (its position is clamped into the cache; it writes only its
own row).

A failure belongs to its request: a job whose prompt cannot be laid out or prefilled fails alone; a row whose scores
are not numbers (its state turned to nan) is flagged in the read-back and fails alone; and a decode step that raises
is retried on halves of its batch until the row(s) that raise are found. A retry is exact because an attempt commits
nothing before its last ops, `official` generators are rewound, and `fast` draws are a function of the step. The
message a failed request carries is short; the detail goes to the log.

Not thread-safe: the runtime calls `submit` and `step` from one thread (stage.py).
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass

import torch
from torch import Tensor

from engine.config import ChunkingConfig, DecodeConfig, StageConfig
from engine.model.config import Qwen3TTSConfig
from engine.model.device import host_tensor
from engine.model.generate import draw_code0, predictor_pick
from engine.model.keyed_sampling import keyed_uniforms, sample_keyed
from engine.model.prompt import PromptError, TalkerPrompt, build_task_prompt
from engine.model.sampling import SamplingParams, process_talker_logits, suppress_mask
from engine.model.talker import Talker
from engine.stages.chunker import Chunker
from engine.stages.graphs import StepGraphs
from engine.stages.messages import Cancel, Credit, Failed, StageInput, StageOutput, TalkerJob
from engine.stages.slots import MIN_NEW, PENALTY, SlotTable, StepRows
from telemetry import events as ev

log = logging.getLogger(__name__)


@dataclass
class _Row:
    """A request in the running batch, as the host sees it: its slot, where it stands, and where its frames go."""

    request_id: str
    slot: int
    prompt_len: int
    limit: int  # code-0 draws allowed: max_new_tokens, capped so every decode position fits max_model_len
    params: SamplingParams
    generator: torch.Generator | None  # `official` sampling only
    chunks: Chunker
    step: int = 0  # code-0 draws so far


class KeyedDraws:
    """`fast` sampling for one step's rows: code 0, then the code predictor's picks, each keyed by (seed, step, code
    position). A row whose scores are not numbers draws -1 (`sample_keyed`): it is flagged in `broken`, and id 0
    stands in for it so that the step goes on for the others."""

    def __init__(self, rows: StepRows, k_cap: int, sub_k_cap: int) -> None:
        self.warp, self.sub_warp = rows.talker_warp(k_cap), rows.predictor_warp(sub_k_cap)
        self.uniforms = keyed_uniforms(rows.key, rows.step)
        self.broken = torch.zeros_like(rows.step, dtype=torch.bool)

    def code0(self, scores: Tensor) -> Tensor:
        return self._checked(sample_keyed(scores, self.warp, self.uniforms[:, 0]))

    def pick(self, j: int, scores: Tensor) -> Tensor:
        """The code predictor's sampler (`PickFn`) for code j + 1."""
        return self._checked(sample_keyed(scores, self.sub_warp, self.uniforms[:, j + 1]))

    def _checked(self, ids: Tensor) -> Tensor:
        self.broken = self.broken | (ids < 0)
        return ids.clamp(min=0)


def _top_k_cap(top_k: int, vocab: int) -> int:
    """How many of the highest scores a row with this top-k may keep."""
    return vocab if top_k == 0 else min(top_k, vocab)


def batch_buckets(buckets: list[int], max_num_seqs: int) -> list[int]:
    """The batch sizes a step runs at: the configured ones below `max_num_seqs`, then `max_num_seqs` itself."""
    return [b for b in buckets if b < max_num_seqs] + [max_num_seqs]


class TalkerStage:
    name = "talker"

    def __init__(
        self,
        talker: Talker,
        config: Qwen3TTSConfig,
        stage: StageConfig,
        chunking: ChunkingConfig,
        recorder: ev.Recorder | None = None,
        max_prefills_per_step: int = 2,
        decode: DecodeConfig | None = None,
    ) -> None:
        self.talker, self.config, self.chunking = talker, config, chunking
        self.recorder = recorder or ev.get_recorder()
        self.max_prefills_per_step = max_prefills_per_step
        self.decode = decode or DecodeConfig()
        self.capacity = stage.max_model_len
        self.eos_id = talker.cfg.codec_eos_token_id
        weight = talker.codec_head.weight
        self.device, self.dtype = weight.device, weight.dtype
        slots = stage.max_num_seqs
        self.official = self.decode.sampling_mode == "official"
        self.buckets = batch_buckets(self.decode.batch_buckets, slots)
        self.vocab = talker.cfg.vocab_size
        self.predictor_vocab = talker.code_predictor.cfg.vocab_size
        # allocated once, under inference mode like every write into them (in `step`); the last KV row is the scratch
        with torch.inference_mode():
            self.cache = talker.allocate_cache(slots + 1, self.capacity)
            self.cp_cache = talker.code_predictor.allocate_cache(slots)
            self.table = SlotTable(slots, self.vocab, talker.cfg.hidden_size, self.capacity, self.dtype, self.device)
            self.suppress = suppress_mask(self.vocab, self.eos_id, self.device)
        self.graphs: StepGraphs | None = None
        if self.device.type == "cuda" and self.decode.cuda_graphs and not self.official:
            self.graphs = StepGraphs(self._full_step, self.buckets, self.table.scratch, self.device)
        self._free = list(range(slots - 1, -1, -1))  # pop() hands out the lowest slot
        self._waiting: deque[TalkerJob] = deque()
        self._rows: dict[str, _Row] = {}  # the running batch, in admission order
        self._chunks: dict[str, Chunker] = {}  # running and finished requests until their last chunk is out

    # the Stage protocol

    def submit(self, message: StageInput) -> None:
        if isinstance(message, TalkerJob):
            if message.request_id in self._chunks or any(j.request_id == message.request_id for j in self._waiting):
                raise ValueError(f"request {message.request_id!r} is already in the talker stage")
            self._waiting.append(message)
        elif isinstance(message, Credit):
            self._credit(message.request_id, message.n)
        elif isinstance(message, Cancel):
            self._drop(message.request_id)
        else:
            raise TypeError(f"the talker stage takes TalkerJob, Credit or Cancel, not {type(message).__name__}")

    def has_work(self) -> bool:
        return (
            bool(self._waiting and self._free)
            or any(not row.chunks.blocked for row in self._rows.values())
            or any(ch.ready for ch in self._chunks.values())
        )

    @torch.inference_mode()
    def step(self) -> list[StageOutput]:
        out: list[StageOutput] = []
        self._admit(out)
        runnable = [row for row in self._rows.values() if not row.chunks.blocked]
        if runnable:
            self._decode(runnable, out)
        self._emit(out)
        self.recorder.counter(ev.IN_FLIGHT, len(self._rows), track=ev.TALKER)
        self.recorder.counter(ev.QUEUE_DEPTH, len(self._waiting), track=ev.TALKER)
        return out

    # admission

    def _admit(self, out: list[StageOutput]) -> None:
        prefills = 0
        while self._waiting and self._free and prefills < self.max_prefills_per_step:
            job = self._waiting.popleft()
            rid = job.request_id
            try:
                prompt = self._build_prompt(job)
            except PromptError as exc:
                log.warning("request %s: talker: %s", rid, exc)
                out.append(Failed(rid, f"talker: {exc}"))
                continue
            except Exception:  # a bad job fails alone; the batch goes on
                log.exception("request %s: talker: laying out the prompt failed", rid)
                out.append(Failed(rid, "talker: the prompt could not be laid out"))
                continue
            n = prompt.embeds.shape[1]
            if n > self.capacity:
                out.append(Failed(rid, f"prompt of {n} positions exceeds max_model_len {self.capacity}"))
                continue
            prefix = None if job.ref_codes is None else job.ref_codes.cpu()
            chunks = Chunker(rid, self.chunking, job.credits, prefix)
            # the last decode step feeds draw limit-2 at position n+limit-3, which must be < capacity
            limit = min(job.params.max_new_tokens, self.capacity - n + 2)
            if limit <= 1:  # the first draw is also the last: no frame
                chunks.finish()
                self._chunks[rid] = chunks
                continue
            prefills += 1
            slot = self._free.pop()
            self.recorder.instant(ev.PREFILL_START, request=rid)
            try:
                with self.recorder.span(ev.PREFILL, ev.TALKER, request=rid, positions=n):
                    logits, hidden = self.talker.prefill(prompt.embeds, self.cache, slot)
                    self.table.admit(slot, prompt, job.params, job.seed, logits[0], hidden[0])
                seeded = self.official and job.seed is not None
                generator = torch.Generator(self.device).manual_seed(job.seed) if seeded else None
            except Exception:
                log.exception("request %s: talker: the prefill failed", rid)
                self._clear(slot)
                out.append(Failed(rid, "talker: the prompt could not be prefilled"))
                continue
            self._chunks[rid] = chunks
            self._rows[rid] = _Row(rid, slot, n, limit, job.params, generator, chunks)

    def _build_prompt(self, job: TalkerJob) -> TalkerPrompt:
        """The prompt of the checkpoint's task from the job's fields; one it lacks raises `PromptError` (-> Failed)."""
        dev = self.device

        def batch_of_one(ids: Tensor | None) -> Tensor | None:  # (n,) token ids -> (1, n) on the device
            return None if ids is None else ids.to(dev)[None]

        return build_task_prompt(
            self.talker,
            self.config,
            batch_of_one(job.text_ids),
            job.language,
            xvector=None if job.x_vector is None else job.x_vector.to(dev, self.dtype),
            ref_ids=batch_of_one(job.ref_ids),
            ref_codes=None if job.ref_codes is None else job.ref_codes.to(dev),
            speaker=job.speaker,
            instruct_ids=batch_of_one(job.instruct_ids),
            non_streaming=job.non_streaming,
        )

    # the decode step

    def _decode(self, rows: list[_Row], out: list[StageOutput]) -> None:
        """One decode step for `rows`; if it raises, the halves are retried until the failing rows are found."""
        # draws a retry must repeat: a generator that drew before the failing row must draw the same again
        states = [None if row.generator is None else row.generator.get_state() for row in rows]
        try:
            frames = self._run(rows)
        except Exception as exc:
            error = exc
        else:
            self._commit(rows, frames, out)
            return
        for row, state in zip(rows, states, strict=True):
            if state is not None:
                row.generator.set_state(state)
        if len(rows) > 1:
            half = len(rows) // 2
            self._decode(rows[:half], out)
            self._decode(rows[half:], out)
            return
        log.error("request %s: talker: the decode step failed", rows[0].request_id, exc_info=error)
        self._fail(rows[0], out)

    def _run(self, rows: list[_Row]) -> Tensor:
        """The step for `rows` at its bucket's shape: (B, 17) on the host, each row's 16 codes and a broken flag."""
        n = len(rows)
        bucket = n if self.official else self._bucket(n)
        slots = [row.slot for row in rows] + [self.table.scratch] * (bucket - n)
        with self.recorder.span(ev.DECODE_STEP, ev.TALKER, batch_size=n, requests=[r.request_id for r in rows]):
            if self.graphs is not None and self.graphs.has(bucket):
                frames = self.graphs.replay(slots)
            else:
                frames = self._step(host_tensor(slots, self.device), rows)
            return frames[:n].cpu()

    def _bucket(self, n: int) -> int:
        if self.decode.batch_invariant:
            return self.buckets[-1]
        return next(b for b in self.buckets if b >= n)

    def _full_step(self, slots: Tensor) -> Tensor:
        """The step at its static shape (the whole KV capacity, every id a candidate): what a CUDA graph captures."""
        return self._device_step(slots, self.capacity, self.vocab, self.predictor_vocab, None)

    def _step(self, slots: Tensor, rows: list[_Row]) -> Tensor:
        if self.decode.batch_invariant:
            return self._full_step(slots)
        kv_len = min(max(row.prompt_len + row.step for row in rows) + 1, self.capacity)
        k_cap = max(_top_k_cap(row.params.top_k, self.vocab) for row in rows)
        sub_k_cap = max(_top_k_cap(row.params.subtalker_top_k, self.predictor_vocab) for row in rows)
        return self._device_step(slots, kv_len, k_cap, sub_k_cap, rows if self.official else None)

    def _device_step(
        self, slots: Tensor, kv_len: int, k_cap: int, sub_k_cap: int, official: list[_Row] | None
    ) -> Tensor:
        """Code 0, codes 1..15 and the talker's next logits for the rows in `slots` (B,), written into their slots
        at the end. `official`: the rows, whose generators draw; None samples keyed. Returns (B, 17) on the device."""
        talker, table = self.talker, self.table
        rows = table.gather(slots)
        logits, generated = table.logits[slots], table.generated[slots]
        if official is None:
            scores = process_talker_logits(
                logits,
                generated,
                rows.step,
                rows.floats[:, PENALTY, None],
                rows.ints[:, MIN_NEW],
                self.suppress,
                self.eos_id,
            )
            draws = KeyedDraws(rows, k_cap, sub_k_cap)
            code0, pick = draws.code0(scores), draws.pick
        else:
            params, generators = [r.params for r in official], [r.generator for r in official]
            code0 = draw_code0(logits, generated, rows.step, params, generators, self.eos_id)
            pick = predictor_pick(params, generators, self.device)
        with self.recorder.span(ev.PREDICTOR, ev.TALKER, batch_size=slots.shape[0]):
            rest, codec_sum = talker.code_predictor.predict(
                table.hidden[slots], talker.embed_codec(code0), self.cp_cache, pick
            )
        embeds = codec_sum + table.trailing_rows(rows)
        positions = rows.position.clamp(max=self.capacity - 1)
        next_logits, hidden = talker.decode_step(embeds, self.cache, slots, positions, kv_len=kv_len)
        table.advance(rows, code0, next_logits, hidden)
        broken = torch.zeros_like(code0) if official is not None else draws.broken.long()
        return torch.cat((code0[:, None], rest, broken[:, None]), dim=1)

    def _commit(self, rows: list[_Row], frames: Tensor, out: list[StageOutput]) -> None:
        """The step succeeded: hand out each row's frame, or end the row (EOS, its limit, or broken)."""
        for row, frame in zip(rows, frames, strict=True):
            if frame[-1]:
                log.error("request %s: talker: its scores are not numbers", row.request_id)
                self._fail(row, out)
            elif int(frame[0]) == self.eos_id:
                self._finish(row)
            else:
                row.chunks.push(frame[:-1])
                row.step += 1
                if row.step + 1 >= row.limit:
                    self._finish(row)

    # leaving

    def _finish(self, row: _Row) -> None:
        """No more frames: the slot goes back now; the chunker stays until its last chunk is out."""
        row.chunks.finish()
        del self._rows[row.request_id]
        self._free.append(row.slot)

    def _fail(self, row: _Row, out: list[StageOutput]) -> None:
        del self._rows[row.request_id]
        self._chunks.pop(row.request_id, None)
        self._clear(row.slot)
        out.append(Failed(row.request_id, "talker: the decode step failed"))

    def _clear(self, slot: int) -> None:
        """Free a slot whose keys and values may hold nan or inf: zeroed first, since a later row attends to masked
        columns too, and a zero weight times nan is nan."""
        self.cache.k[:, slot] = 0
        self.cache.v[:, slot] = 0
        self._free.append(slot)

    def _drop(self, request_id: str) -> None:
        self._waiting = deque(job for job in self._waiting if job.request_id != request_id)
        row = self._rows.pop(request_id, None)
        if row is not None:
            self._free.append(row.slot)
        self._chunks.pop(request_id, None)

    def _credit(self, request_id: str, n: int) -> None:
        if request_id in self._chunks:
            self._chunks[request_id].credits += n
            return
        for job in self._waiting:
            if job.request_id == request_id:
                job.credits += n

    def _emit(self, out: list[StageOutput]) -> None:
        for request_id, chunks in list(self._chunks.items()):
            if not chunks.ready:
                continue
            start = ev.now_ns()
            for chunk in chunks.take():
                out.append(chunk)
                self.recorder.record_span(ev.CHUNK_EMIT, ev.TALKER, start, request=request_id, frames=len(chunk.codes))
                if chunk.index == 0:
                    self.recorder.instant(ev.FIRST_CODE_CHUNK, request=request_id)
            if chunks.done:
                del self._chunks[request_id]
