"""Code2Wav's pre-transformer: sliding-window causal attention with RoPE and LayerScale, run on explicit KV state.

Each layer attends to itself and the `sliding_window - 1` frames before it (the official mask keeps key j for query i
when i - window < j <= i), so the per-layer state is the rotated keys and values of the last `window - 1` frames.
Module names follow the official `Qwen3TTSTokenizerV2DecoderTransformerModel`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine.model.config import CodecDecoderConfig
from engine.model.layers import RMSNorm, apply_rope, rope_cos_sin, rope_inv_freq


class LayerScale(nn.Module):
    def __init__(self, dim: int, initial_scale: float) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.full((dim,), initial_scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * x


class Attention(nn.Module):
    def __init__(self, cfg: CodecDecoderConfig) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = cfg.head_dim
        bias = cfg.attention_bias
        self.q_proj = nn.Linear(cfg.hidden_size, self.num_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(cfg.hidden_size, self.num_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(cfg.hidden_size, self.num_kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, cfg.hidden_size, bias=bias)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, T, hidden); caches (B, kv_heads, window - 1, head_dim) -> (out, new k_cache, new v_cache)."""
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, -1, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, -1, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, -1, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        k, v = torch.cat([k_cache, k], dim=2), torch.cat([v_cache, v], dim=2)
        keep = k_cache.shape[2]
        k_cache, v_cache = k[:, :, k.shape[2] - keep :], v[:, :, v.shape[2] - keep :]
        if self.num_kv_heads != self.num_heads:
            k = k.repeat_interleave(self.num_heads // self.num_kv_heads, dim=1)
            v = v.repeat_interleave(self.num_heads // self.num_kv_heads, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.head_dim**-0.5)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1)), k_cache, v_cache


class Mlp(nn.Module):
    def __init__(self, cfg: CodecDecoderConfig) -> None:
        super().__init__()
        if cfg.hidden_act != "silu":
            raise ValueError(f"Code2Wav MLP supports hidden_act 'silu', got {cfg.hidden_act!r}")
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class TransformerLayer(nn.Module):
    def __init__(self, cfg: CodecDecoderConfig) -> None:
        super().__init__()
        self.self_attn = Attention(cfg)
        self.mlp = Mlp(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn_layer_scale = LayerScale(cfg.hidden_size, cfg.layer_scale_initial_scale)
        self.mlp_layer_scale = LayerScale(cfg.hidden_size, cfg.layer_scale_initial_scale)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h, k_cache, v_cache = self.self_attn(self.input_layernorm(x), cos, sin, mask, k_cache, v_cache)
        x = x + self.self_attn_layer_scale(h)
        x = x + self.mlp_layer_scale(self.mlp(self.post_attention_layernorm(x)))
        return x, k_cache, v_cache


class PreTransformer(nn.Module):
    """latent (B, T, latent_dim) -> (B, T, latent_dim), continuing from positions `pos` with per-layer KV state."""

    def __init__(self, cfg: CodecDecoderConfig) -> None:
        super().__init__()
        self.window = cfg.sliding_window
        self.input_proj = nn.Linear(cfg.latent_dim, cfg.hidden_size)
        self.layers = nn.ModuleList(TransformerLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.output_proj = nn.Linear(cfg.hidden_size, cfg.latent_dim)
        self.register_buffer("inv_freq", rope_inv_freq(cfg.head_dim, cfg.rope_theta), persistent=False)

    def forward(
        self, x: torch.Tensor, pos: torch.Tensor, keys: list[torch.Tensor], values: list[torch.Tensor]
    ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """pos (B,) int64: frames each row has decoded before this chunk; keys/values: one cache per layer."""
        t, past = x.shape[1], self.window - 1
        q_pos = pos[:, None] + torch.arange(t, device=x.device)  # (B, T) absolute positions of the new frames
        # rope in fp32 whatever the weights' dtype, as upstream
        cos, sin = rope_cos_sin(q_pos, self.inv_freq, x.dtype)
        # sliding-window mask over [cache (window - 1 slots), new frames]; cache slots before position 0 are empty
        k_pos = pos[:, None] - past + torch.arange(past + t, device=x.device)  # (B, past + T)
        offset = q_pos[:, :, None] - k_pos[:, None, :]
        mask = ((offset >= 0) & (offset < self.window) & (k_pos[:, None, :] >= 0))[:, None]

        x = self.input_proj(x)
        new_keys, new_values = [], []
        for layer, k_cache, v_cache in zip(self.layers, keys, values, strict=True):
            x, k_cache, v_cache = layer(x, cos, sin, mask, k_cache, v_cache)
            new_keys.append(k_cache)
            new_values.append(v_cache)
        return self.output_proj(self.norm(x)), new_keys, new_values
