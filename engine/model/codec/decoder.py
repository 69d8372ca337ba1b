"""Code2Wav: the causal decoder of the 12 Hz speech tokenizer, 16 codes per frame -> 1920 samples at 24 kHz.

Codes are (B, T, num_quantizers) int64, frames along dim 1, as the talker emits them and as the official top-level
`decode` takes them. Every part is causal (sliding-window attention, left-padded convs, right-trimmed transposed
convs), so `decode_chunk` on consecutive chunks with a carried `DecoderState` gives the one-shot result.

Relation to the official `Qwen3TTSTokenizerV2Decoder.chunked_decode(codes, 300, 25)`: identical for T <= 300 frames.
Beyond that the official restarts in 300-frame windows with only 25 frames of left context (an approximation, and
positions restart); `decode` here stays exact for any length.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from engine.model.codec.convs import CausalConv, CausalTransConv, ConvNeXtBlock, DecoderBlock, SnakeBeta
from engine.model.codec.quantizer import SplitResidualVectorQuantizer
from engine.model.codec.transformer import PreTransformer
from engine.model.config import CodecDecoderConfig


@dataclass
class DecoderState:
    """Streaming state of a batch of requests; dim 0 of every tensor is the request.

    The serving engine batches requests by `DecoderState.cat` (every tensor has a fixed per-request shape) and
    separates them with `split`; a batch decodes chunks of one common length, each row continuing at its own `pos`.
    """

    pos: torch.Tensor  # (B,) int64: frames decoded so far
    keys: list[torch.Tensor]  # per pre-transformer layer: (B, kv_heads, window - 1, head_dim), RoPE applied
    values: list[torch.Tensor]  # same shapes as keys
    tails: list[torch.Tensor]  # per causal conv with left context: (B, in_channels, context) of its past input

    @classmethod
    def cat(cls, states: Sequence[DecoderState]) -> DecoderState:
        def join(lists: Sequence[list[torch.Tensor]]) -> list[torch.Tensor]:
            return [torch.cat(ts) for ts in zip(*lists, strict=True)]

        return cls(
            torch.cat([s.pos for s in states]),
            join([s.keys for s in states]),
            join([s.values for s in states]),
            join([s.tails for s in states]),
        )

    def split(self) -> list[DecoderState]:
        def row(ts: list[torch.Tensor], i: int) -> list[torch.Tensor]:
            return [t[i : i + 1] for t in ts]

        return [
            DecoderState(self.pos[i : i + 1], row(self.keys, i), row(self.values, i), row(self.tails, i))
            for i in range(self.pos.shape[0])
        ]


class Code2Wav(nn.Module):
    """The official `decoder.*` modules with the top `decoder.` prefix stripped."""

    def __init__(self, cfg: CodecDecoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.total_upsample = math.prod(cfg.upsample_rates + cfg.upsampling_ratios)
        self.pre_transformer = PreTransformer(cfg)
        self.quantizer = SplitResidualVectorQuantizer(cfg.num_quantizers, cfg.codebook_dim, cfg.codebook_size)
        self.pre_conv = CausalConv(cfg.codebook_dim, cfg.latent_dim, 3)
        self.upsample = nn.ModuleList(
            nn.ModuleList([CausalTransConv(cfg.latent_dim, cfg.latent_dim, r, r), ConvNeXtBlock(cfg.latent_dim)])
            for r in cfg.upsampling_ratios
        )
        dims = [cfg.decoder_dim // 2**i for i in range(len(cfg.upsample_rates) + 1)]
        blocks = [DecoderBlock(dims[i], dims[i + 1], r) for i, r in enumerate(cfg.upsample_rates)]
        self.decoder = nn.ModuleList(
            [CausalConv(cfg.latent_dim, dims[0], 7), *blocks, SnakeBeta(dims[-1]), CausalConv(dims[-1], 1, 7)]
        )
        stateful = [m for m in self.modules() if isinstance(m, (CausalConv, CausalTransConv)) and m.context]
        for slot, m in enumerate(stateful):
            m.slot = slot
        self._tail_shapes = [(m.conv.in_channels, m.context) for m in stateful]

    def init_state(
        self, batch_size: int = 1, device: torch.device | None = None, dtype: torch.dtype | None = None
    ) -> DecoderState:
        """The state before the first frame: empty KV windows and zero conv tails (= the causal zero padding)."""
        ref = self.pre_conv.conv.weight
        device, dtype = device or ref.device, dtype or ref.dtype
        cfg = self.cfg
        kv_shape = (batch_size, cfg.num_key_value_heads, cfg.sliding_window - 1, cfg.head_dim)
        kv = [torch.zeros(kv_shape, device=device, dtype=dtype) for _ in range(2 * cfg.num_hidden_layers)]
        return DecoderState(
            pos=torch.zeros(batch_size, dtype=torch.int64, device=device),
            keys=kv[: cfg.num_hidden_layers],
            values=kv[cfg.num_hidden_layers :],
            tails=[torch.zeros(batch_size, c, n, device=device, dtype=dtype) for c, n in self._tail_shapes],
        )

    def decode_chunk(self, codes: torch.Tensor, state: DecoderState) -> tuple[torch.Tensor, DecoderState]:
        """codes (B, T, num_quantizers) continuing `state` -> (audio (B, T * total_upsample), the next state).

        Pure: `state` is not modified, so a chunk can be re-run from the same state."""
        if codes.shape[-1] != self.cfg.num_quantizers:
            raise ValueError(f"expected codes (B, T, {self.cfg.num_quantizers}), got {tuple(codes.shape)}")
        tails = list(state.tails)
        h = self.quantizer.decode(codes).transpose(1, 2)
        h = self.pre_conv(h, tails).transpose(1, 2)
        h, keys, values = self.pre_transformer(h, state.pos, state.keys, state.values)
        h = h.transpose(1, 2)
        for trans_conv, convnext in self.upsample:
            h = convnext(trans_conv(h, tails), tails)
        for layer in self.decoder:
            h = layer(h) if isinstance(layer, SnakeBeta) else layer(h, tails)
        audio = h.clamp(min=-1, max=1)[:, 0]
        return audio, DecoderState(state.pos + codes.shape[1], keys, values, tails)

    def decode(self, codes: torch.Tensor, chunk_size: int = 300) -> torch.Tensor:
        """codes (B, T, num_quantizers) -> audio (B, T * total_upsample); exact causal decoding for any T,
        run `chunk_size` frames at a time to bound the attention's memory."""
        state = self.init_state(codes.shape[0], device=codes.device)
        chunks = [codes.new_zeros(codes.shape[0], 0, dtype=state.keys[0].dtype)]
        for start in range(0, codes.shape[1], chunk_size):
            audio, state = self.decode_chunk(codes[:, start : start + chunk_size], state)
            chunks.append(audio)
        return torch.cat(chunks, dim=-1)
