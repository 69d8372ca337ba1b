"""The code predictor (sub-talker, MTP): codes 1..15 of a frame from the talker's last hidden state and code 0.

Per frame it starts from an empty cache of its own (16 columns), prefills [talker hidden, codec_embedding(c0)], then
runs 14 single steps; all rows of a batch share the same positions, so no mask is needed. No HF generate: sampling
is the caller's `pick(step, logits) -> ids`, so the same loop serves greedy, seeded sampling and batches.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from engine.model.config import CodePredictorConfig
from engine.model.layers import AttnBatch, KVCache, RMSNorm, decoder_layers, rope_inv_freq, run_layers

PickFn = Callable[[int, Tensor], Tensor]  # (predictor step 0..14, float32 logits (B, 2048)) -> ids (B,)


class CodePredictorModel(nn.Module):
    def __init__(self, cfg: CodePredictorConfig, embedding_dim: int) -> None:
        super().__init__()
        self.layers = decoder_layers(cfg)
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.codec_embedding = nn.ModuleList(
            nn.Embedding(cfg.vocab_size, embedding_dim) for _ in range(cfg.num_code_groups - 1)
        )


class CodePredictor(nn.Module):
    def __init__(self, cfg: CodePredictorConfig, talker_hidden_size: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.model = CodePredictorModel(cfg, talker_hidden_size)
        self.lm_head = nn.ModuleList(
            nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False) for _ in range(cfg.num_code_groups - 1)
        )
        self.small_to_mtp_projection: nn.Module = (
            nn.Linear(talker_hidden_size, cfg.hidden_size, bias=True)
            if cfg.hidden_size != talker_hidden_size
            else nn.Identity()
        )
        self.register_buffer("inv_freq", rope_inv_freq(cfg.head_dim, cfg.rope_theta), persistent=False)

    @property
    def num_codes(self) -> int:
        """Codes predicted per frame (15)."""
        return self.cfg.num_code_groups - 1

    def allocate_cache(self, rows: int, dtype: torch.dtype | None = None, device=None) -> KVCache:
        w = self.lm_head[0].weight
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

    def _forward(self, embeds: Tensor, cache: KVCache, start: int) -> Tensor:
        b, n, _ = embeds.shape
        rows = torch.arange(b, device=embeds.device)
        positions = torch.arange(start, start + n, device=embeds.device).expand(b, n)
        at = AttnBatch(rows, positions, kv_len=start + n, fresh=start == 0)
        x = self.small_to_mtp_projection(embeds)
        return run_layers(self.model.layers, self.model.norm, x, self.inv_freq, cache, at)

    @torch.inference_mode()
    def predict(
        self, talker_hidden: Tensor, code0_embed: Tensor, cache: KVCache, pick: PickFn
    ) -> tuple[Tensor, Tensor]:
        """talker_hidden, code0_embed: (B, H_talker); cache: from `allocate_cache` with >= B rows (overwritten).

        Returns codes 1..15 (B, 15) int64 and the sum of all 16 code embeddings (B, H_talker), the codec part of the
        talker's next input.
        """
        # prefill: lm_head over both positions, then the last, as the official forward does (bit parity on CPU)
        h = self._forward(torch.stack((talker_hidden, code0_embed), dim=1), cache, start=0)
        ids = pick(0, self.lm_head[0](h)[:, -1].float())
        codes, embeds = [ids], [code0_embed[:, None], self.model.codec_embedding[0](ids[:, None])]
        for j in range(1, self.num_codes):
            h = self._forward(self.model.codec_embedding[j - 1](ids[:, None]), cache, start=j + 1)
            ids = pick(j, self.lm_head[j](h)[:, -1].float())
            codes.append(ids)
            embeds.append(self.model.codec_embedding[j](ids[:, None]))
        return torch.stack(codes, dim=1), torch.cat(embeds, dim=1).sum(1)
