"""The code predictor (sub-talker, MTP): codes 1..15 of a frame from the talker's last hidden state and code 0.

Per frame it starts from an empty cache of its own (16 columns), prefills [talker hidden, codec_embedding(c0)], then
runs 14 single steps; all rows of a batch share the same positions, so no mask is needed, and the cache is read and
written through views (its first B rows, the step's column). The 15 heads and the 15 embedding tables are one weight
each (loaded from and saved as the checkpoint's `lm_head.{j}` and `codec_embedding.{j}`). No HF generate: sampling
is the caller's `pick(step, logits) -> ids`, so the same loop serves greedy, seeded sampling and batches.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from engine.model.config import CodePredictorConfig
from engine.model.layers import (
    AttnBatch,
    GroupedEmbedding,
    GroupedLinear,
    KVCache,
    LayersFn,
    RMSNorm,
    Rope,
    decoder_layers,
    rope_inv_freq,
    run_layers,
)

PickFn = Callable[[int, Tensor], Tensor]  # (predictor step 0..14, float32 logits (B, 2048)) -> ids (B,)


class CodePredictorModel(nn.Module):
    def __init__(self, cfg: CodePredictorConfig, embedding_dim: int) -> None:
        super().__init__()
        self.layers = decoder_layers(cfg)
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.codec_embedding = GroupedEmbedding(cfg.num_code_groups - 1, cfg.vocab_size, embedding_dim)


class CodePredictor(nn.Module):
    def __init__(self, cfg: CodePredictorConfig, talker_hidden_size: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.model = CodePredictorModel(cfg, talker_hidden_size)
        self.lm_head = GroupedLinear(cfg.num_code_groups - 1, cfg.hidden_size, cfg.vocab_size)
        self.small_to_mtp_projection: nn.Module = (
            nn.Linear(talker_hidden_size, cfg.hidden_size, bias=True)
            if cfg.hidden_size != talker_hidden_size
            else nn.Identity()
        )
        self.register_buffer("inv_freq", rope_inv_freq(cfg.head_dim, cfg.rope_theta), persistent=False)
        self.run_layers: LayersFn = run_layers  # the talker's `compile_decoder` swaps in the compiled one

    @property
    def num_codes(self) -> int:
        """Codes predicted per frame (15)."""
        return self.cfg.num_code_groups - 1

    def allocate_cache(self, rows: int, dtype: torch.dtype | None = None, device=None) -> KVCache:
        w = self.lm_head.weight
        c = self.cfg
        return KVCache.allocate(
            c.num_hidden_layers,
            rows,
            c.num_key_value_heads,
            self.num_codes + 1,
            c.head_dim,
            dtype or w.dtype,
            device or w.device,
        )

    def _forward(self, embeds: Tensor, cache: KVCache, rope: Rope, start: int) -> Tensor:
        """embeds (B, L, H_talker) at positions start..start+L-1 of cache rows 0..B-1; `rope` of all 16 positions."""
        b, n, _ = embeds.shape
        at = AttnBatch(slice(0, b), slice(start, start + n), kv_len=start + n, fresh=start == 0)
        x = self.small_to_mtp_projection(embeds)
        return self.run_layers(self.model.layers, self.model.norm, x, rope.span(start, start + n), cache, at)

    def frame_embedding(self, code0_embed: Tensor, codes: Tensor) -> Tensor:
        """The sum of a frame's 16 code embeddings (B, H_talker): code 0's (B, H_talker) and codes 1..15 (B, 15)."""
        return torch.cat((code0_embed[:, None], self.model.codec_embedding(codes)), dim=1).sum(1)

    @torch.inference_mode()
    def predict(
        self, talker_hidden: Tensor, code0_embed: Tensor, cache: KVCache, pick: PickFn
    ) -> tuple[Tensor, Tensor]:
        """talker_hidden, code0_embed: (B, H_talker); cache: from `allocate_cache` with >= B rows (overwritten).

        Returns codes 1..15 (B, 15) int64 and the sum of all 16 code embeddings (B, H_talker), the codec part of the
        talker's next input.
        """
        positions = torch.arange(self.num_codes + 1, device=talker_hidden.device)[None]
        rope = Rope.at(positions, self.inv_freq, talker_hidden.dtype)
        # prefill: lm_head over both positions, then the last, as the official forward does (bit parity on CPU)
        h = self._forward(torch.stack((talker_hidden, code0_embed), dim=1), cache, rope, start=0)
        codes = [pick(0, self.lm_head(h, 0)[:, -1].float())]
        for j in range(1, self.num_codes):
            embeds = self.model.codec_embedding.lookup(j - 1, codes[-1])[:, None]
            h = self._forward(embeds, cache, rope, start=j + 1)
            codes.append(pick(j, self.lm_head(h, j)[:, -1].float()))
        stacked = torch.stack(codes, dim=1)
        return stacked, self.frame_embedding(code0_embed, stacked)
