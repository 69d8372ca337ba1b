"""Sampling settings and the logits processing of the official generate (HF transformers 4.57.3 semantics).

Talker (code 0), in HF's order: repetition penalty over the code-0 ids generated so far (the prompt is embeddings
only, so nothing else counts) -> EOS masked while fewer than `min_new_tokens` ids were drawn (HF builds both
MinLength and MinNewTokens from it; they agree) -> ids 2048..3071 except EOS suppressed -> [sampling only]
temperature -> top-k -> top-p -> softmax -> multinomial. Greedy is argmax of the processed scores (HF adds no warpers
then). Code predictor: no processors at all, the same warpers with the `subtalker_*` settings.

Everything is batched over rows with per-row settings as tensors; the values equal HF's per-row ones bit for bit
(tensor division rounds like division by a Python float). Each row draws from its own `torch.Generator`: a generator
seeded with s gives the draws of the official run after `torch.manual_seed(s)`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch
from torch import Tensor

from engine.model.device import host_tensor

CODEC_SPECIAL_RANGE = 1024  # the top 1024 codec ids are control/language/speaker ids, never sampled except EOS
# Accepted ranges, chosen so that every value stays finite and non-zero in float32 (1e308 would be inf, 1e-300 zero,
# and either turns every score into nan inside the step) and top-k fits an int64.
TEMPERATURE_RANGE = (1e-3, 100.0)
REPETITION_PENALTY_RANGE = (1e-2, 100.0)
MAX_TOP_K = 1_000_000  # anything above the vocabulary (3072 ids) keeps every id, as top_k 0 does
MAX_TOKENS = 1_000_000  # max_new_tokens / min_new_tokens; an engine caps max_new_tokens far lower


class SamplingError(ValueError):
    """A sampling setting out of its range or of the wrong type; `field` names it (as the HTTP API does)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message


@dataclass
class SamplingParams:
    """Defaults are the release's generation_config.json (min_new_tokens=2 is hard-coded in the official generate).
    Every value is checked at construction (and by `dataclasses.replace`), so a bad one never reaches a step."""

    do_sample: bool = True
    temperature: float = 0.9
    top_k: int = 50
    top_p: float = 1.0
    repetition_penalty: float = 1.05
    subtalker_dosample: bool = True
    subtalker_temperature: float = 0.9
    subtalker_top_k: int = 50
    subtalker_top_p: float = 1.0
    max_new_tokens: int = 8192
    min_new_tokens: int = 2

    def __post_init__(self) -> None:
        for f in fields(self):
            _check(f.name, getattr(self, f.name))


def _check(name: str, value: object) -> None:
    """One setting against its type and range; the message says what is accepted, in the API's words."""
    if name in ("do_sample", "subtalker_dosample"):
        if not isinstance(value, bool):
            raise SamplingError(name, "must be true or false")
        return
    if name in ("top_k", "subtalker_top_k", "max_new_tokens", "min_new_tokens"):
        low = 1 if name == "max_new_tokens" else 0
        high = MAX_TOP_K if name.endswith("top_k") else MAX_TOKENS
        if not isinstance(value, int) or isinstance(value, bool):
            raise SamplingError(name, "must be a whole number")
        if not low <= value <= high:
            raise SamplingError(name, f"must be between {low} and {high}, got {value}")
        return
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise SamplingError(name, "must be a finite number")
    if name in ("top_p", "subtalker_top_p"):
        if not 0 < value <= 1:
            raise SamplingError(name, f"must be in (0, 1], got {value}")
        return
    low, high = REPETITION_PENALTY_RANGE if name == "repetition_penalty" else TEMPERATURE_RANGE
    if not low <= value <= high:
        raise SamplingError(name, f"must be between {low:g} and {high:g}, got {value:g}")


@dataclass
class Warp:
    """Per-row warper settings: temperature (B, 1); top_k (B,), 0 = off; top_p_cut (B, 1) = 1 - top_p taken in
    float64 as HF does (-1 = off, for top_p 1). `max_top_k`: the largest top_k (at least 1) known on the host, so
    that top-k needs no read-back of a device tensor (a sync per draw on a GPU); None reads it from `top_k`."""

    temperature: Tensor
    top_k: Tensor
    top_p_cut: Tensor
    max_top_k: int | None = None

    @classmethod
    def of(cls, temperature: Sequence[float], top_k: Sequence[int], top_p: Sequence[float], device=None) -> Warp:
        return cls(
            host_tensor(temperature, device, torch.float32)[:, None],
            host_tensor(top_k, device, torch.int64),
            host_tensor([1 - p if p < 1 else -1.0 for p in top_p], device, torch.float32)[:, None],
            max([1, *top_k]),
        )

    @classmethod
    def talker(cls, params: Sequence[SamplingParams], device=None) -> Warp:
        return cls.of([p.temperature for p in params], [p.top_k for p in params], [p.top_p for p in params], device)

    @classmethod
    def predictor(cls, params: Sequence[SamplingParams], device=None) -> Warp:
        return cls.of(
            [p.subtalker_temperature for p in params],
            [p.subtalker_top_k for p in params],
            [p.subtalker_top_p for p in params],
            device,
        )


def suppress_mask(vocab_size: int, eos_id: int, device=None) -> Tensor:
    """(vocab,) bool: the ids the talker may never draw (the special range except EOS)."""
    ids = torch.arange(vocab_size, device=device)
    return (ids >= vocab_size - CODEC_SPECIAL_RANGE) & (ids != eos_id)


def process_talker_logits(
    logits: Tensor,
    generated: Tensor,
    num_generated: Tensor,
    penalty: Tensor,
    min_new_tokens: Tensor,
    suppress: Tensor,
    eos_id: int,
) -> Tensor:
    """logits (B, V) float32; generated (B, V) bool of code-0 ids drawn so far; num_generated, min_new_tokens (B,);
    penalty (B, 1) float32; suppress (V,) bool."""
    penalised = torch.where(logits < 0, logits * penalty, logits / penalty)
    scores = torch.where(generated, penalised, logits)
    # not `eos[eos_id] = True`: on a GPU that copies the Python scalar in synchronously
    eos = torch.arange(suppress.shape[0], device=suppress.device) == eos_id
    scores = torch.where(eos & (num_generated < min_new_tokens)[:, None], -torch.inf, scores)
    return torch.where(suppress, -torch.inf, scores)


def warp_logits(scores: Tensor, warp: Warp) -> Tensor:
    """Temperature, then top-k, then top-p (min_tokens_to_keep 1), as HF's warpers; disabled ones are identities."""
    scores = scores / warp.temperature
    vocab = scores.shape[-1]
    k = warp.top_k.clamp(1, vocab)
    max_k = int(k.max()) if warp.max_top_k is None else min(warp.max_top_k, vocab)
    kth = torch.topk(scores, max_k).values.gather(1, (k - 1)[:, None])
    kth = torch.where(warp.top_k[:, None] > 0, kth, -torch.inf)
    scores = scores.masked_fill(scores < kth, -torch.inf)
    sorted_scores, order = torch.sort(scores, descending=False)
    cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
    remove = cumulative <= warp.top_p_cut
    remove[..., -1:] = False
    return scores.masked_fill(remove.scatter(1, order, remove), -torch.inf)


def choose_tokens(
    scores: Tensor, warp: Warp, do_sample: Sequence[bool], generators: Sequence[torch.Generator | None]
) -> Tensor:
    """Greedy rows: argmax of `scores`; sampling rows: multinomial over softmax(warped scores), one draw per row from
    that row's generator (None = the global one). Returns ids (B,) int64."""
    ids = scores.argmax(dim=-1)
    if any(do_sample):
        probs = warp_logits(scores, warp).softmax(dim=-1)
        for b, sample in enumerate(do_sample):
            if sample:
                ids[b] = torch.multinomial(probs[b : b + 1], 1, generator=generators[b])[0, 0]
    return ids
