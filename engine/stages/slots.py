"""The talker's per-slot state on the device: written once when a request is admitted, read by every decode step.

A decode step gathers its rows' settings, positions, trailing text rows and last logits from these tensors by slot
index, so it needs no per-row Python and has the same tensors to read at every step (what a CUDA graph replays).
One slot more than `max_num_seqs` is kept as scratch: padding rows of a batch bucket point at it, so they read and
write finite values that belong to nobody.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from engine.model.device import host_tensor
from engine.model.keyed_sampling import RowWarp, seed_key
from engine.model.prompt import TalkerPrompt
from engine.model.sampling import SamplingParams

# columns of `SlotTable.floats`
TEMPERATURE, TOP_P, SUB_TEMPERATURE, SUB_TOP_P, PENALTY = range(5)
# columns of `SlotTable.ints`
TOP_K, SUB_TOP_K, DO_SAMPLE, SUB_DO_SAMPLE, MIN_NEW, STEP, POSITION, KEY, TRAIL_LEN = range(9)


@dataclass
class StepRows:
    """What a decode step reads for its rows (B,), gathered from the table by slot."""

    slots: Tensor
    floats: Tensor  # (B, 5)
    ints: Tensor  # (B, 9)

    @property
    def step(self) -> Tensor:
        return self.ints[:, STEP]

    @property
    def position(self) -> Tensor:
        return self.ints[:, POSITION]

    @property
    def key(self) -> Tensor:
        return self.ints[:, KEY]

    def talker_warp(self, k_cap: int) -> RowWarp:
        f, i = self.floats, self.ints
        return RowWarp(f[:, TEMPERATURE], i[:, TOP_K], f[:, TOP_P], i[:, DO_SAMPLE] > 0, k_cap)

    def predictor_warp(self, k_cap: int) -> RowWarp:
        f, i = self.floats, self.ints
        return RowWarp(f[:, SUB_TEMPERATURE], i[:, SUB_TOP_K], f[:, SUB_TOP_P], i[:, SUB_DO_SAMPLE] > 0, k_cap)


class SlotTable:
    """(slots + 1) rows of decode state; row `scratch` (the last) is the padding rows' slot."""

    def __init__(self, slots: int, vocab: int, hidden: int, trailing: int, dtype: torch.dtype, device) -> None:
        n = slots + 1
        self.scratch = slots
        self.logits = torch.zeros(n, vocab, dtype=torch.float32, device=device)
        self.hidden = torch.zeros(n, hidden, dtype=dtype, device=device)
        self.generated = torch.zeros(n, vocab, dtype=torch.bool, device=device)  # code-0 ids drawn (the penalty's)
        self.trailing = torch.zeros(n, trailing, hidden, dtype=dtype, device=device)
        self.tts_pad = torch.zeros(n, hidden, dtype=dtype, device=device)
        self.floats = torch.ones(n, 5, dtype=torch.float32, device=device)
        self.ints = torch.zeros(n, 9, dtype=torch.int64, device=device)

    def admit(
        self, slot: int, prompt: TalkerPrompt, params: SamplingParams, seed: int | None, logits: Tensor, hidden: Tensor
    ) -> None:
        """A prefilled request's state into `slot`: its settings, text rows and first logits."""
        p, dev = params, self.logits.device
        self.logits[slot], self.hidden[slot] = logits, hidden
        self.generated[slot] = False
        rows = min(prompt.trailing.shape[0], self.trailing.shape[1])  # a row never decodes past the capacity
        self.trailing[slot, :rows] = prompt.trailing[:rows]
        self.tts_pad[slot] = prompt.tts_pad
        floats = [p.temperature, p.top_p, p.subtalker_temperature, p.subtalker_top_p, p.repetition_penalty]
        self.floats[slot] = host_tensor(floats, dev, torch.float32)
        key = int(seed_key(torch.tensor(seed or 0)))
        ints = [p.top_k, p.subtalker_top_k, p.do_sample, p.subtalker_dosample, p.min_new_tokens]
        self.ints[slot] = host_tensor([*ints, 0, prompt.embeds.shape[1], key, rows], dev, torch.int64)

    def gather(self, slots: Tensor) -> StepRows:
        return StepRows(slots, self.floats[slots], self.ints[slots])

    def trailing_rows(self, rows: StepRows) -> Tensor:
        """(B, H): each row's trailing text row for its step, or tts_pad once they are used up."""
        step, length = rows.step, rows.ints[:, TRAIL_LEN]
        at = step.clamp(max=self.trailing.shape[1] - 1)
        text = self.trailing[rows.slots, at]
        return torch.where((step < length)[:, None], text, self.tts_pad[rows.slots])

    def advance(self, rows: StepRows, code0: Tensor, logits: Tensor, hidden: Tensor) -> None:
        """A step's results into its rows' slots: code 0 into the penalty history, the next logits, one step on."""
        slots = rows.slots
        self.generated[slots, code0] = torch.ones_like(code0, dtype=torch.bool)
        self.logits[slots], self.hidden[slots] = logits, hidden
        self.ints[slots, STEP] = rows.step + 1
        self.ints[slots, POSITION] = rows.position + 1
