"""Qwen3 decoder building blocks shared by the talker and the code predictor, on an explicit preallocated KV cache.

The talker's interleaved M-RoPE gets three identical position streams in TTS (`get_rope_index` is
`attention_mask.cumsum - 1` expanded ×3), so every channel picks the same angle: it is plain 1-D RoPE, which is what
`rope_cos_sin` computes. The float results equal the official modules' bit for bit, with fewer calls: q/k/v and
gate/up are one matmul each in a decode step (row blocks of one weight, `joined_linear`), q and k are normalised and
rotated together, RoPE's sign is folded into its sine table; each of these is checked against the official op
sequence in tests/model/test_fused.py. A decode step on the CPU is bound by its calls as much as by its weights, so
the hot path calls functions, not modules, where it can.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.model.config import CodePredictorConfig, TalkerConfig


def join_rows(module: nn.Module, joined: str, parts: Sequence[str], rows: Sequence[int]) -> None:
    """Hold the checkpoint's weights `parts` (names relative to `module`) as the row blocks of one weight `joined`,
    so that one matmul or lookup serves them all. The official names still load (concatenated on the way in, while
    the checkpoint's own tensors are the only other copy) and are what `state_dict` gives (views of the blocks)."""

    def load(_module: nn.Module, state: dict[str, Tensor], prefix: str, *_args: object) -> None:
        names = [prefix + p for p in parts]
        if all(n in state for n in names):  # else the loader reports the missing pieces by name
            state[prefix + joined] = torch.cat([state.pop(n) for n in names])

    def save(_module: nn.Module, state: dict[str, Tensor], prefix: str, _metadata: object) -> None:
        blocks = state.pop(prefix + joined).split(list(rows))
        state.update((prefix + p, b) for p, b in zip(parts, blocks, strict=True))

    module.register_load_state_dict_pre_hook(load)
    module.register_state_dict_post_hook(save)


JOINED_MAX_ROWS = 64  # input rows up to which a joined weight's blocks are one matmul: a decode step or batch


def joined_linear(x: Tensor, weight: Tensor, rows: Sequence[int]) -> Tensor:
    """`F.linear(x, weight)` for a weight of row blocks (`join_rows`), each block's output bit-equal to its own
    matmul. Up to `JOINED_MAX_ROWS` input rows it is one matmul (a decode step reads each weight once: the bound the
    join is for); above, each block's own matmul on a view of it (a prompt, where the join saves little, and where a
    CPU GEMM may split a tall product's work by the output's width: AMX bf16 kernels do at 300 rows)."""
    if x.numel() <= JOINED_MAX_ROWS * x.shape[-1]:
        return F.linear(x, weight)
    return torch.cat([F.linear(x, block) for block in weight.split(list(rows))], dim=-1)


class GroupedLinear(nn.Linear):
    """`groups` bias-free heads of `out_features` each, one weight (groups * out_features, in_features), saved and
    loaded as the checkpoint's `{j}.weight` (a ModuleList of Linear). Head j is a slice of it: the same bits as its
    own Linear."""

    def __init__(self, groups: int, in_features: int, out_features: int) -> None:
        super().__init__(in_features, groups * out_features, bias=False)
        self.rows = out_features
        join_rows(self, "weight", [f"{j}.weight" for j in range(groups)], [out_features] * groups)

    def forward(self, x: Tensor, group: int) -> Tensor:
        return F.linear(x, self.weight[group * self.rows : (group + 1) * self.rows])


class GroupedEmbedding(nn.Embedding):
    """`groups` tables of `vocab` rows, one weight (groups * vocab, dim), saved and loaded as the checkpoint's
    `{j}.weight` (a ModuleList of Embedding): `forward` embeds a code of every group in one lookup, `lookup` one
    group's codes; indexing and iterating give each group's lookup, as the ModuleList did."""

    def __init__(self, groups: int, vocab: int, dim: int) -> None:
        super().__init__(groups * vocab, dim)
        self.groups, self.vocab = groups, vocab
        join_rows(self, "weight", [f"{j}.weight" for j in range(groups)], [vocab] * groups)
        self.register_buffer("offsets", torch.arange(groups) * vocab, persistent=False)

    def forward(self, codes: Tensor) -> Tensor:
        """codes (..., groups) -> embeddings (..., groups, dim)."""
        return F.embedding(codes + self.offsets, self.weight)

    def lookup(self, group: int, ids: Tensor) -> Tensor:
        return F.embedding(ids, self.weight[group * self.vocab : (group + 1) * self.vocab])

    def __getitem__(self, group: int) -> Callable[[Tensor], Tensor]:
        if not 0 <= group < self.groups:
            raise IndexError(f"group {group} of {self.groups}")
        return partial(self.lookup, group)

    def __iter__(self) -> Iterator[Callable[[Tensor], Tensor]]:
        return (self[j] for j in range(self.groups))


def rms_normalize(x: Tensor, eps: float | Tensor) -> Tensor:
    """x / rms(x) over the last dimension, in float32, back in x's dtype (RMSNorm without its gain). `h * h` is
    pow(h, 2)'s own kernel; `eps` may be a 0-dim float32 tensor, which adds as the float does, without wrapping a
    Python scalar each call."""
    wide = x.dtype == torch.float32  # `to` is a call even when it has nothing to do
    h = x if wide else x.to(torch.float32)
    h = h * torch.rsqrt((h * h).mean(-1, keepdim=True) + eps)
    return h if wide else h.to(x.dtype)


class RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps
        self.eps_t = torch.tensor(eps, dtype=torch.float32, device="cpu")  # a CPU scalar: adds on any device

    def forward(self, x: Tensor) -> Tensor:
        return self.weight * rms_normalize(x, self.eps_t)


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
class Rope:
    """RoPE of one forward pass, shaped (B or 1, L, 1, head_dim) for activations laid out (B, L, heads, head_dim).

    `sin` carries rotate_half's sign (-sin on the first half), so rotating is x * cos + x.roll(half) * sin: the same
    products and sum as `apply_rope` (negation is exact), in half the calls.
    """

    cos: Tensor
    sin: Tensor

    @classmethod
    def at(cls, positions: Tensor, inv_freq: Tensor, dtype: torch.dtype) -> Rope:
        """For integer positions (B, L)."""
        cos, sin = rope_cos_sin(positions, inv_freq, dtype)
        half = sin.shape[-1] // 2
        return cls(cos[:, :, None], torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)[:, :, None])

    def span(self, start: int, stop: int) -> Rope:
        """Positions start..stop-1 of a table built for 0..L-1."""
        return Rope(self.cos[:, start:stop], self.sin[:, start:stop])

    def rotate(self, x: Tensor) -> Tensor:
        return x * self.cos + x.roll(x.shape[-1] // 2, -1) * self.sin


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

    rows: (B,) cache rows, or a slice of consecutive ones; positions: (B, L) positions of the new tokens (also their
    cache columns; with rows a tensor), or a slice when every row writes the same columns; kv_len: cache columns to
    attend over. `fresh` marks a prefill from an empty row, which attends over the new keys directly and causally,
    as the official dynamic cache does. mask: (B, 1, L, kv_len) bool (True = attend), or None: a fresh prefill is
    causal, a step (one new token per row) attends to all kv_len columns. Slices index the cache as views: no
    gather, no scatter. (What is causal is read from `fresh`, not from L, so that a compiled stack does not branch
    on a dynamic size.)
    """

    rows: Tensor | slice
    positions: Tensor | slice
    kv_len: int
    mask: Tensor | None = None
    fresh: bool = False


def store(cache: Tensor, new: Tensor, at: AttnBatch) -> Tensor:
    """Write new keys or values (B, kv_heads, L, head_dim) into one layer's cache at the batch's rows and positions;
    return what attention reads, (B, kv_heads, kv_len or L, head_dim)."""
    if isinstance(at.positions, slice):
        cache[at.rows, :, at.positions] = new
    else:
        cache[at.rows[:, None], :, at.positions] = new.transpose(1, 2)
    if at.fresh:
        return new
    if isinstance(at.rows, slice):
        return cache[at.rows, :, : at.kv_len]
    return cache[:, :, : at.kv_len].index_select(0, at.rows)


class Attention(nn.Module):
    """GQA self-attention with per-head RMSNorm on q and k (Qwen3), no biases.

    q, k and v come out of one weight (`qkv_proj`, the checkpoint's q/k/v_proj as row blocks, `joined_linear`: each
    block's output is bit-equal to its own matmul, see tests/model/test_fused.py); q and k are normalised and rotated
    together, each head with its own gain, as the separate official ops would give. Linears are called as
    functions: a decode step is bound by its calls, and a module call costs about as much as a small op."""

    def __init__(self, hidden_size: int, heads: int, kv_heads: int, head_dim: int, eps: float) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim
        q, kv = heads * head_dim, kv_heads * head_dim
        self.qkv_proj = nn.Linear(hidden_size, q + 2 * kv, bias=False)
        self.qkv_rows = (q, kv, kv)
        join_rows(self, "qkv_proj.weight", ("q_proj.weight", "k_proj.weight", "v_proj.weight"), self.qkv_rows)
        self.o_proj = nn.Linear(q, hidden_size, bias=False)
        self.q_norm = RMSNorm(head_dim, eps)
        self.k_norm = RMSNorm(head_dim, eps)

    def _qk_gain(self) -> Tensor:
        """(heads + kv_heads, head_dim): q_norm's gain for the q heads, k_norm's for the k heads."""
        return torch.cat((self.q_norm.weight.expand(self.heads, -1), self.k_norm.weight.expand(self.kv_heads, -1)))

    def forward(self, x: Tensor, rope: Rope, k_cache: Tensor, v_cache: Tensor, at: AttnBatch) -> Tensor:
        b, n, _ = x.shape
        qkv = joined_linear(x, self.qkv_proj.weight, self.qkv_rows).view(b, n, -1, self.head_dim)
        qk, v = qkv.split((self.heads + self.kv_heads, self.kv_heads), dim=2)
        qk = rope.rotate(rms_normalize(qk, self.q_norm.eps_t) * self._qk_gain())
        q, k = qk.transpose(1, 2).split((self.heads, self.kv_heads), dim=1)
        k, v = store(k_cache, k, at), store(v_cache, v.transpose(1, 2), at)
        causal = at.fresh and at.mask is None
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=at.mask, is_causal=causal, scale=self.head_dim**-0.5, enable_gqa=True
        )
        return F.linear(out.transpose(1, 2).reshape(b, n, -1), self.o_proj.weight)


class MLP(nn.Module):
    """SwiGLU; gate and up come out of one weight (`gate_up_proj`, the checkpoint's gate/up_proj as row blocks)."""

    def __init__(self, hidden_size: int, intermediate_size: int) -> None:
        super().__init__()
        self.gate_up_proj = nn.Linear(hidden_size, 2 * intermediate_size, bias=False)
        self.gate_up_rows = (intermediate_size, intermediate_size)
        join_rows(self, "gate_up_proj.weight", ("gate_proj.weight", "up_proj.weight"), self.gate_up_rows)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = joined_linear(x, self.gate_up_proj.weight, self.gate_up_rows).chunk(2, dim=-1)
        return F.linear(F.silu(gate) * up, self.down_proj.weight)


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

    def forward(self, x: Tensor, rope: Rope, k_cache: Tensor, v_cache: Tensor, at: AttnBatch) -> Tensor:
        x = x + self.self_attn(self.input_layernorm(x), rope, k_cache, v_cache, at)
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


def run_layers(layers: nn.ModuleList, norm: RMSNorm, x: Tensor, rope: Rope, cache: KVCache, at: AttnBatch) -> Tensor:
    """The decoder stack on embeddings x (B, L, H) -> final-normed hidden states (B, L, H)."""
    for layer, k_cache, v_cache in zip(layers, cache.k, cache.v, strict=True):
        x = layer(x, rope, k_cache, v_cache, at)
    return norm(x)


LayersFn = Callable[[nn.ModuleList, RMSNorm, Tensor, Rope, KVCache, AttnBatch], Tensor]


def compiled_run_layers() -> LayersFn:
    """`run_layers` under torch.compile (inductor with its C++ wrapper, sizes dynamic): a step's ~50 small calls per
    layer become a few fused kernels inside one call (on one CPU core: mid 130 -> 115 ms a frame, tiny 14.5 ->
    10.6). Not bit-equal to eager (fused reductions and products round differently, ~1e-6 in float32; greedy bf16
    codes diverge), so never for official parity. Compiling takes about a minute (tiny) to two (mid) on a small CPU
    the first time, 15-20 s from inductor's on-disk cache; six graphs in all."""
    return torch.compile(run_layers, dynamic=True, options={"cpp_wrapper": True})


def decode_mask(positions: Tensor, kv_len: int) -> Tensor:
    """(B, 1, 1, kv_len) mask for one new token per row at `positions` (B,): attend to columns 0..position."""
    cols = torch.arange(kv_len, device=positions.device)
    return (cols[None, :] <= positions[:, None])[:, None, None, :]
