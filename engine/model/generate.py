"""The reference stage-0 loop for one request: prompt -> code frames, equal to the official `generate`.

Per step t: draw code 0 from the talker logits; stop on EOS (not returned) or when t + 1 == max_new_tokens (that
last draw gets no predictor run, so max_new_tokens draws give at most max_new_tokens - 1 frames); else run the code
predictor for codes 1..15, and feed the talker Σ16 code embeddings + (trailing[t] or tts_pad). The step pieces
(`draw_code0`, `predictor_pick`) are batched over rows so the serving engine's `official` mode can reuse them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from engine.model.code_predictor import PickFn
from engine.model.device import host_tensor
from engine.model.prompt import TalkerPrompt
from engine.model.sampling import SamplingParams, Warp, choose_tokens, process_talker_logits, suppress_mask
from engine.model.talker import Talker


def draw_code0(
    logits: Tensor,
    generated: Tensor,
    num_generated: Tensor,
    params: Sequence[SamplingParams],
    generators: Sequence[torch.Generator | None],
    eos_id: int,
) -> Tensor:
    """Code 0 for each row (B,) from talker logits (B, V); `generated` (B, V) bool marks the ids drawn so far."""
    dev = logits.device
    penalty = host_tensor([[p.repetition_penalty] for p in params], dev, torch.float32)
    min_new = host_tensor([p.min_new_tokens for p in params], dev)
    scores = process_talker_logits(
        logits, generated, num_generated, penalty, min_new, suppress_mask(logits.shape[-1], eos_id, dev), eos_id
    )
    return choose_tokens(scores, Warp.talker(params, dev), [p.do_sample for p in params], generators)


def predictor_pick(params: Sequence[SamplingParams], generators: Sequence[torch.Generator | None], device) -> PickFn:
    """The code predictor's sampler: no logits processors, the subtalker warpers."""
    warp = Warp.predictor(params, device)
    do_sample = [p.subtalker_dosample for p in params]
    return lambda _step, logits: choose_tokens(logits, warp, do_sample, generators)


def next_talker_input(
    codec_sum: Tensor, trailing: Sequence[Tensor], tts_pad: Sequence[Tensor], steps: Sequence[int]
) -> Tensor:
    """(B, H): each row's Σ16 code embeddings plus its trailing text row for this step, or tts_pad once used up."""
    text = [tr[s] if s < tr.shape[0] else pad for tr, pad, s in zip(trailing, tts_pad, steps, strict=True)]
    return codec_sum + torch.stack(text)


@torch.inference_mode()
def generate_codes(
    talker: Talker, prompt: TalkerPrompt, params: SamplingParams, generator: torch.Generator | None = None
) -> Tensor:
    """All code frames of one request, (frames, 16) int64. `generator` None draws from torch's global generator."""
    eos_id = talker.cfg.codec_eos_token_id
    dev = prompt.embeds.device
    cache = talker.allocate_cache(1, prompt.embeds.shape[1] + params.max_new_tokens)
    cp_cache = talker.code_predictor.allocate_cache(1)
    pick = predictor_pick([params], [generator], dev)
    generated = torch.zeros(1, talker.cfg.vocab_size, dtype=torch.bool, device=dev)
    slot = torch.zeros(1, dtype=torch.int64, device=dev)

    # prefill
    logits, hidden = talker.prefill(prompt.embeds, cache, slot=0)
    frames: list[Tensor] = []
    for step in range(params.max_new_tokens):
        code0 = draw_code0(logits, generated, torch.tensor([step], device=dev), [params], [generator], eos_id)
        generated[0, code0] = True
        if int(code0) == eos_id or step + 1 == params.max_new_tokens:
            break
        # decode step: codes 1..15, then the talker on the frame's embedding
        rest, codec_sum = talker.code_predictor.predict(hidden, talker.embed_codec(code0), cp_cache, pick)
        frames.append(torch.cat((code0, rest[0])))
        embeds = next_talker_input(codec_sum, [prompt.trailing], [prompt.tts_pad], [step])
        pos = torch.tensor([prompt.embeds.shape[1] + step], device=dev)
        logits, hidden = talker.decode_step(embeds, cache, slot, pos)
    return torch.stack(frames) if frames else torch.zeros(0, talker.cfg.num_code_groups, dtype=torch.int64, device=dev)
