"""Per-request grouping of code frames into `CodeChunk`s, bounded by credits.

A small first chunk gets audio started quickly, then (with `ChunkingConfig.ramp`) chunks as long as all the audio sent
before them, up to the steady size: at real time or faster, each is made before the audio ahead of it has played.
Every chunk, the last one included, spends one credit: the listener grants credits as it consumes chunks, so a
request never runs more than its credits ahead of its listener. A request whose next chunk is full but has no credit
is `blocked`: the talker leaves its row out of the decode batch until a `Credit` arrives, and other rows go on.
"""

from __future__ import annotations

import torch
from torch import Tensor

from engine.config import ChunkingConfig
from engine.stages.messages import CodeChunk

CODE_GROUPS = 16  # codes per frame: the 12 Hz codec's codebooks


class Chunker:
    def __init__(
        self, request_id: str, chunking: ChunkingConfig, credits: int, prefix_codes: Tensor | None = None
    ) -> None:
        self.request_id = request_id
        self.chunking = chunking
        self.credits = credits
        self.prefix_codes = prefix_codes  # rides on chunk 0 (ICL reference codes)
        self.index = 0  # of the next chunk
        self.sent = 0  # frames in the chunks that went out
        self.finished = False  # no more frames will come
        self.done = False  # the last chunk went out
        self._frames: list[Tensor] = []

    @property
    def target(self) -> int:
        """Frames in the next full chunk."""
        first, steady = self.chunking.first_chunk_frames, self.chunking.chunk_frames
        if self.index == 0:
            return first
        return min(steady, max(first, self.sent)) if self.chunking.ramp else steady

    @property
    def full(self) -> bool:
        return len(self._frames) >= self.target

    @property
    def blocked(self) -> bool:
        """A full chunk waits for a credit: generating more frames would only queue them here."""
        return self.full and self.credits <= 0

    @property
    def ready(self) -> bool:
        """`take` would emit a chunk now."""
        return not self.done and self.credits > 0 and (self.full or self.finished)

    def push(self, frame: Tensor) -> None:
        """One frame (CODE_GROUPS,) int64 on the host."""
        self._frames.append(frame)

    def finish(self) -> None:
        self.finished = True

    def take(self) -> list[CodeChunk]:
        """Every chunk that may go out now, in order; the last one has is_last and may hold fewer frames (or none,
        when the request ended right on a chunk boundary)."""
        out = []
        while self.ready:
            n = min(self.target, len(self._frames))
            last = self.finished and n == len(self._frames)
            codes = torch.stack(self._frames[:n]) if n else torch.zeros(0, CODE_GROUPS, dtype=torch.int64)
            del self._frames[:n]
            prefix = self.prefix_codes if self.index == 0 else None
            out.append(CodeChunk(self.request_id, self.index, codes, last, prefix))
            self.index += 1
            self.sent += n
            self.credits -= 1
            self.done = last
        return out
