"""Qwen3 decoder building blocks shared by the talker and the code predictor, on an explicit preallocated KV cache.

The talker's interleaved M-RoPE gets three identical position streams in TTS (`get_rope_index` is
`attention_mask.cumsum - 1` expanded ×3), so every channel picks the same angle: it is plain 1-D RoPE, which is what
`rope_cos_sin` computes. The float ops mirror the official modules op for op, so batch-1 results are bit-identical.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.model.config import CodePredictorConfig, TalkerConfig


class RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        dtype = x.dtype
        h = x.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(dtype)


def rope_inv_freq(head_dim: int, theta: float) -> Tensor:
    """float32 RoPE frequencies, computed on the CPU (as the official modules are, before they move to a GPU, whose
    pow may round differently), then placed on the default device (a `with torch.device(...)` block's)."""
    exponent = torch.arange(0, head_dim, 2, dtype=torch.int64, device="cpu").float() / head_dim
    return (1.0 / (theta**exponent)).to(torch.get_default_device())


def rope_cos_sin(positions: Tensor, inv_freq: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """cos/sin of shape (B, L, head_dim) for integer positions (B, L), computed in float32."""
    freqs = positions[..., None].float() * inv_freq.to(positions.device)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def _rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x: (B, heads, L, head_dim); cos/sin: (B, L, head_dim)."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return (x * cos) + (_rotate_half(x) * sin)


@dataclass
class KVCache:
    """Preallocated keys/values, one row per sequence slot: (layers, slots, kv_heads, capacity, head_dim)."""

    k: Tensor
    v: Tensor

    @classmethod
    def allocate(
        cls,
        num_layers: int,
        slots: int,
        kv_heads: int,
        capacity: int,
        head_dim: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> KVCache:
        shape = (num_layers, slots, kv_heads, capacity, head_dim)
        return cls(torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device))

    @property
    def capacity(self) -> int:
        return self.k.shape[3]


@dataclass
class AttnBatch:
    """Where a forward pass reads and writes the cache.

    rows: (B,) cache rows; positions: (B, L) positions of the new tokens (also their cache columns); kv_len: cache
    columns to attend over; mask: (B, 1, L, kv_len) bool (True = attend), or None when every row attends causally
    to all kv_len columns with the new tokens last (equal lengths). `fresh` marks a prefill from an empty row, which
    attends over the new keys directly, as the official dynamic cache does.
    """

    rows: Tensor
    positions: Tensor
    kv_len: int
    mask: Tensor | None = None
    fresh: bool = False


class Attention(nn.Module):
    """GQA self-attention with per-head RMSNorm on q and k (Qwen3), no biases."""

    def __init__(self, hidden_size: int, heads: int, kv_heads: int, head_dim: int, eps: float) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim
        self.q_proj = nn.Linear(hidden_size, heads * head_dim, bias=False)
        self.k_proj = nn.Linear(hidden_size, kv_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(hidden_size, kv_heads * head_dim, bias=False)
        self.o_proj = nn.Linear(heads * head_dim, hidden_size, bias=False)
        self.q_norm = RMSNorm(head_dim, eps)
        self.k_norm = RMSNorm(head_dim, eps)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, k_cache: Tensor, v_cache: Tensor, at: AttnBatch) -> Tensor:
        b, n, _ = x.shape
        q = self.q_norm(self.q_proj(x).view(b, n, -1, self.head_dim)).transpose(1, 2)
        k = self.k_norm(self.k_proj(x).view(b, n, -1, self.head_dim)).transpose(1, 2)
        v = self.v_proj(x).view(b, n, -1, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        rows = at.rows[:, None]
        k_cache[rows, :, at.positions] = k.transpose(1, 2)
        v_cache[rows, :, at.positions] = v.transpose(1, 2)
        if not at.fresh:
            k = k_cache[:, :, : at.kv_len].index_select(0, at.rows)
            v = v_cache[:, :, : at.kv_len].index_select(0, at.rows)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=at.mask, is_causal=at.mask is None and n > 1, scale=self.head_dim**-0.5, enable_gqa=True
        )
        return self.o_proj(out.transpose(1, 2).reshape(b, n, -1))


class MLP(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    """Pre-norm Qwen3 block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(
        self, hidden_size: int, intermediate_size: int, heads: int, kv_heads: int, head_dim: int, eps: float
    ) -> None:
        super().__init__()
        self.self_attn = Attention(hidden_size, heads, kv_heads, head_dim, eps)
        self.mlp = MLP(hidden_size, intermediate_size)
        self.input_layernorm = RMSNorm(hidden_size, eps)
        self.post_attention_layernorm = RMSNorm(hidden_size, eps)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, k_cache: Tensor, v_cache: Tensor, at: AttnBatch) -> Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, k_cache, v_cache, at)
        return x + self.mlp(self.post_attention_layernorm(x))


def decoder_layers(cfg: TalkerConfig | CodePredictorConfig) -> nn.ModuleList:
    """The Qwen3 decoder stack of the talker or the code predictor (their configs name the same fields)."""
    return nn.ModuleList(
        DecoderLayer(
            cfg.hidden_size,
            cfg.intermediate_size,
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim,
            cfg.rms_norm_eps,
        )
        for _ in range(cfg.num_hidden_layers)
    )


def run_layers(
    layers: nn.ModuleList, norm: RMSNorm, x: Tensor, inv_freq: Tensor, cache: KVCache, at: AttnBatch
) -> Tensor:
    """The decoder stack on embeddings x (B, L, H) -> final-normed hidden states (B, L, H)."""
    cos, sin = rope_cos_sin(at.positions, inv_freq, x.dtype)
    for i, layer in enumerate(layers):
        x = layer(x, cos, sin, cache.k[i], cache.v[i], at)
    return norm(x)


def decode_mask(positions: Tensor, kv_len: int) -> Tensor:
    """(B, 1, 1, kv_len) mask for one new token per row at `positions` (B,): attend to columns 0..position."""
    cols = torch.arange(kv_len, device=positions.device)
    return (cols[None, :] <= positions[:, None])[:, None, None, :]
