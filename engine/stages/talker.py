"""Stage 0, the talker: prompts in, code frames out in chunks, with continuous batching.

Each `step` admits waiting jobs into free KV-cache slots (a prefill each, at most `max_prefills_per_step`, so a burst
of arrivals delays the running rows by a bounded amount), then runs one decode step for every row that may run:
code 0 per row, codes 1..15 from the code predictor for the whole batch, the next talker input built on the device,
and the talker's decode step at each row's own position. Rows sit in arbitrary cache slots at different lengths; a
finished or cancelled request frees its slot at once. Per-row logits, hidden states and the repetition-penalty
history stay in preallocated device buffers; the sampled codes are the only thing read back, once per step.

The per-step rules are those of `engine.model.generate.generate_codes`: at concurrency 1 the frames are equal to it
bit for bit. Two shortcuts keep a step free of host syncs and of useless work. A row that drew EOS still rides
through the predictor and the decode step of that step (its outputs are dropped): we learn of the EOS only at the
one read-back at the end. A row whose next draw could only be its last (the limit) finishes after this frame,
without the decode step that would feed that draw, since a last draw never yields a frame.

A failure belongs to its request: a job whose prompt cannot be laid out or prefilled fails alone, and a decode step
that raises is retried on halves of its batch until the row(s) that raise are found; they fail (`Failed`), the others
take the step as if they had never been batched with them. A retry is exact because an attempt commits nothing a
retry would not redo: the generators' states are restored, the repetition-penalty history, logits and hidden
states are written only once the step succeeded, and the KV-cache columns it wrote are rewritten by the retry.
The message a failed request carries is short; the detail goes to the log.

Not thread-safe: the runtime calls `submit` and `step` from one thread (base.py).
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
from engine.model.generate import draw_code0, next_talker_input, predictor_pick
from engine.model.prompt import PromptError, TalkerPrompt, build_task_prompt
from engine.model.sampling import SamplingParams
from engine.model.talker import Talker
from engine.stages.chunker import Chunker
from engine.stages.messages import Cancel, Credit, Failed, StageInput, StageOutput, TalkerJob
from telemetry import events as ev

log = logging.getLogger(__name__)


@dataclass
class _Row:
    """A request in the running batch: its cache slot and what its next decode step needs."""

    request_id: str
    slot: int
    prompt_len: int
    limit: int  # code-0 draws allowed: max_new_tokens, capped so every decode position fits max_model_len
    params: SamplingParams
    generator: torch.Generator | None
    trailing: Tensor  # (T, H) text rows added to the inputs of decode steps 0..T-1
    tts_pad: Tensor  # (H,) added after that
    chunks: Chunker
    step: int = 0  # code-0 draws so far


@dataclass
class _Step:
    """What one decode step computed, committed only once every row of it succeeded."""

    slots: Tensor  # (B,) on the device
    code0: Tensor  # (B,) on the device
    frames: Tensor  # (B, 16) on the host: the step's one read-back
    next_slots: Tensor | None  # the rows that go on: their next logits and hidden states
    logits: Tensor | None
    hidden: Tensor | None


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
        slots, vocab = stage.max_num_seqs, talker.cfg.vocab_size
        # allocated once, under inference mode like every write into them (in `step`)
        with torch.inference_mode():
            self.cache = talker.allocate_cache(slots, self.capacity)
            self.cp_cache = talker.code_predictor.allocate_cache(slots)
            self.logits = torch.zeros(slots, vocab, dtype=torch.float32, device=self.device)
            self.hidden = torch.zeros(slots, talker.cfg.hidden_size, dtype=self.dtype, device=self.device)
            self.generated = torch.zeros(slots, vocab, dtype=torch.bool, device=self.device)
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
                    self.logits[slot], self.hidden[slot] = logits[0], hidden[0]
                    self.generated[slot] = False
                generator = None if job.seed is None else torch.Generator(self.device).manual_seed(job.seed)
            except Exception:
                log.exception("request %s: talker: the prefill failed", rid)
                self._clear(slot)
                out.append(Failed(rid, "talker: the prompt could not be prefilled"))
                continue
            self._chunks[rid] = chunks
            self._rows[rid] = _Row(rid, slot, n, limit, job.params, generator, prompt.trailing, prompt.tts_pad, chunks)

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
            step = self._step(rows)
        except Exception as exc:
            error = exc
        else:
            self._commit(rows, step)
            return
        for row, state in zip(rows, states, strict=True):
            if state is not None:
                row.generator.set_state(state)
        if len(rows) > 1:
            half = len(rows) // 2
            self._decode(rows[:half], out)
            self._decode(rows[half:], out)
            return
        row = rows[0]
        log.error("request %s: talker: the decode step failed", row.request_id, exc_info=error)
        del self._rows[row.request_id]
        self._chunks.pop(row.request_id, None)
        self._clear(row.slot)
        out.append(Failed(row.request_id, "talker: the decode step failed"))

    def _step(self, rows: list[_Row]) -> _Step:
        """Code 0, codes 1..15 and the talker's next logits for `rows`, written nowhere yet but the KV cache."""
        dev, talker = self.device, self.talker
        params = [row.params for row in rows]
        generators = [row.generator for row in rows]
        with self.recorder.span(ev.DECODE_STEP, ev.TALKER, batch_size=len(rows), requests=[r.request_id for r in rows]):
            slots = host_tensor([row.slot for row in rows], dev)
            steps = host_tensor([row.step for row in rows], dev)
            code0 = draw_code0(self.logits[slots], self.generated[slots], steps, params, generators, self.eos_id)
            with self.recorder.span(ev.PREDICTOR, ev.TALKER, batch_size=len(rows)):
                pick = predictor_pick(params, generators, dev)
                rest, codec_sum = talker.code_predictor.predict(
                    self.hidden[slots], talker.embed_codec(code0), self.cp_cache, pick
                )
            frames = torch.cat((code0[:, None], rest), dim=1)
            go_on = [i for i, row in enumerate(rows) if row.step + 2 < row.limit]
            next_slots = logits = hidden = None
            if go_on:
                next_slots, logits, hidden = self._talker_step([rows[i] for i in go_on], codec_sum, go_on, len(rows))
            return _Step(slots, code0, frames.cpu(), next_slots, logits, hidden)

    def _talker_step(
        self, rows: list[_Row], codec_sum: Tensor, index: list[int], batch: int
    ) -> tuple[Tensor, Tensor, Tensor]:
        """The talker's decode step for `rows` (positions `index` of the step's batch): their slots, next logits and
        hidden states."""
        dev = self.device
        if len(index) < batch:
            codec_sum = codec_sum[host_tensor(index, dev)]
        embeds = next_talker_input(
            codec_sum, [row.trailing for row in rows], [row.tts_pad for row in rows], [row.step for row in rows]
        )
        positions = [row.prompt_len + row.step for row in rows]
        slots = host_tensor([row.slot for row in rows], dev)
        logits, hidden = self.talker.decode_step(
            embeds, self.cache, slots, host_tensor(positions, dev), kv_len=max(positions) + 1
        )
        return slots, logits, hidden

    def _commit(self, rows: list[_Row], step: _Step) -> None:
        """The step succeeded: record code 0 in the penalty history, keep the next logits, hand out the frames."""
        # a device-side True: a Python scalar assigned through tensor indices is copied to the GPU synchronously
        self.generated[step.slots, step.code0] = torch.ones_like(step.code0, dtype=torch.bool)
        if step.next_slots is not None:
            self.logits[step.next_slots], self.hidden[step.next_slots] = step.logits, step.hidden
        for row, frame in zip(rows, step.frames, strict=True):
            if int(frame[0]) == self.eos_id:
                self._finish(row)
                continue
            row.chunks.push(frame)
            row.step += 1
            if row.step + 1 >= row.limit:
                self._finish(row)

    # leaving

    def _finish(self, row: _Row) -> None:
        """No more frames: the slot goes back now; the chunker stays until its last chunk is out."""
        row.chunks.finish()
        del self._rows[row.request_id]
        self._free.append(row.slot)

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
