"""The talker: a Qwen3 decoder over summed text+codec embeddings that predicts codebook 0 of each 80 ms frame.

State dict keys equal the official `talker.*` keys without the prefix. The KV cache has one row per slot, so rows at
different lengths can share a decode step (continuous batching): each row writes at its own position and attends to
its own prefix through a length mask.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.model.code_predictor import CodePredictor
from engine.model.config import TalkerConfig
from engine.model.layers import (
    AttnBatch,
    KVCache,
    LayersFn,
    RMSNorm,
    Rope,
    compiled_run_layers,
    decode_mask,
    decoder_layers,
    rope_inv_freq,
    run_layers,
)


class TextProjection(nn.Module):
    """`ResizeMLP`: text_hidden -> text_hidden -> talker hidden, with biases and SiLU."""

    def __init__(self, in_size: int, mid_size: int, out_size: int) -> None:
        super().__init__()
        self.linear_fc1 = nn.Linear(in_size, mid_size, bias=True)
        self.linear_fc2 = nn.Linear(mid_size, out_size, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear_fc2(F.silu(self.linear_fc1(x)))


class TalkerModel(nn.Module):
    def __init__(self, cfg: TalkerConfig) -> None:
        super().__init__()
        self.layers = decoder_layers(cfg)
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.codec_embedding = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.text_embedding = nn.Embedding(cfg.text_vocab_size, cfg.text_hidden_size)


class Talker(nn.Module):
    def __init__(self, cfg: TalkerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.model = TalkerModel(cfg)
        self.text_projection = TextProjection(cfg.text_hidden_size, cfg.text_hidden_size, cfg.hidden_size)
        self.codec_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.code_predictor = CodePredictor(cfg.code_predictor_config, cfg.hidden_size)
        self.register_buffer("inv_freq", rope_inv_freq(cfg.head_dim, cfg.rope_theta), persistent=False)
        self.run_layers: LayersFn = run_layers

    def compile_decoder(self) -> None:
        """Run the talker's and the code predictor's decoder stacks compiled (`compiled_run_layers`): faster steps,
        not bit-equal to eager, so not in official mode. Each new kind of call (prefill, step, batched step with a
        mask) compiles on its first use."""
        self.run_layers = self.code_predictor.run_layers = compiled_run_layers()

    def allocate_cache(self, slots: int, capacity: int, dtype: torch.dtype | None = None, device=None) -> KVCache:
        w = self.codec_head.weight
        c = self.cfg
        return KVCache.allocate(
            c.num_hidden_layers,
            slots,
            c.num_key_value_heads,
            capacity,
            c.head_dim,
            dtype or w.dtype,
            device or w.device,
        )

    def embed_text(self, ids: Tensor) -> Tensor:
        """P(ids) = text_projection(text_embedding(ids))."""
        return self.text_projection(self.model.text_embedding(ids))

    def embed_codec(self, ids: Tensor) -> Tensor:
        return self.model.codec_embedding(ids)

    @torch.inference_mode()
    def prefill(self, embeds: Tensor, cache: KVCache, slot: int) -> tuple[Tensor, Tensor]:
        """Prompt embeddings (1, L, H) into cache row `slot` at positions 0..L-1.

        Returns float32 logits (1, vocab) and the final hidden state (1, H) of the last position.
        """
        n = embeds.shape[1]
        if n > cache.capacity:
            raise ValueError(f"prompt of {n} positions exceeds the KV cache capacity {cache.capacity}")
        rope = Rope.at(torch.arange(n, device=embeds.device)[None], self.inv_freq, embeds.dtype)
        at = AttnBatch(slice(slot, slot + 1), slice(0, n), kv_len=n, fresh=True)
        h = self.run_layers(self.model.layers, self.model.norm, embeds, rope, cache, at)
        # codec_head over all positions, as the official forward does: CPU GEMMs round differently per row count
        return self.codec_head(h)[:, -1].float(), h[:, -1]

    @torch.inference_mode()
    def decode_step(
        self, embeds: Tensor, cache: KVCache, slots: Tensor, positions: Tensor, kv_len: int | None = None
    ) -> tuple[Tensor, Tensor]:
        """One new position per row: embeds (B, H), cache rows `slots` (B,), each written at `positions` (B,).

        A row attends to its columns 0..position. `kv_len` (max position + 1) may be given by a caller that tracks
        lengths on the host, to avoid a device sync. Returns float32 logits (B, vocab) and hidden states (B, H).
        """
        # batch 1 with derived kv_len attends to all its columns unmasked, exactly as the official decode step
        mask_free = embeds.shape[0] == 1 and kv_len is None
        kv_len = int(positions.max()) + 1 if kv_len is None else kv_len
        if kv_len > cache.capacity:
            raise ValueError(f"position {kv_len - 1} is past the KV cache capacity {cache.capacity}")
        mask = None if mask_free else decode_mask(positions, kv_len)
        rope = Rope.at(positions[:, None], self.inv_freq, embeds.dtype)
        at = AttnBatch(slots, positions[:, None], kv_len=kv_len, mask=mask)
        h = self.run_layers(self.model.layers, self.model.norm, embeds[:, None], rope, cache, at)
        return self.codec_head(h)[:, -1].float(), h[:, -1]
