"""Joined weights (q/k/v, gate/up, the predictor's 15 heads and 15 embedding tables) and the leaner decoder ops:
the official keys load and save, and every output is bit-equal to the official op sequence on this CPU."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from engine.model.layers import (
    JOINED_MAX_ROWS,
    MLP,
    Attention,
    AttnBatch,
    GroupedEmbedding,
    GroupedLinear,
    KVCache,
    Rope,
    apply_rope,
    joined_linear,
    rms_normalize,
    rope_cos_sin,
    rope_inv_freq,
)
from engine.model.talker import Talker
from tests.model.tiny_talker import tiny_config, tiny_talker

DTYPES = [torch.float32, torch.bfloat16]
# (in features, output blocks): the tiny and mid talker's and predictor's q/k/v and gate/up projections
PROJECTIONS = {
    "tiny qkv": (64, [128, 64, 64]),
    "tiny gate/up": (64, [128, 128]),
    "tiny predictor qkv": (32, [64, 32, 32]),
    "mid qkv": (512, [512, 256, 256]),
    "mid gate/up": (512, [1536, 1536]),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", PROJECTIONS)
def test_joined_projection_blocks_equal_separate_matmuls(name, dtype):
    # M = 1 is a decode step, 2 the predictor's prefill, up to 64 a batch (one matmul: the CPU GEMM must not reduce
    # a block's rows differently because the matrix has more of them), 100 and 300 a prompt (each block its own)
    g = torch.Generator().manual_seed(0)
    k, blocks = PROJECTIONS[name]
    weights = [(torch.randn(n, k, generator=g) / k**0.5).to(dtype) for n in blocks]
    joined = torch.cat(weights)
    for m in [*range(1, JOINED_MAX_ROWS + 1), 100, 300]:
        x = torch.randn(1, m, k, generator=g).to(dtype)
        for got, w in zip(joined_linear(x, joined, blocks).split(blocks, dim=-1), weights, strict=True):
            assert torch.equal(got, F.linear(x, w)), f"M={m}"


def test_state_dict_round_trips_official_keys_without_copies():
    source = tiny_talker(seed=3)
    state = source.state_dict()
    assert "model.layers.0.self_attn.q_proj.weight" in state and "code_predictor.lm_head.14.weight" in state
    assert not any(("qkv_proj" in k or "gate_up_proj" in k) for k in state)
    # the saved blocks are views of the joined weight, not copies
    joined = source.model.layers[0].self_attn.qkv_proj.weight
    assert state["model.layers.0.self_attn.v_proj.weight"].untyped_storage().data_ptr() == joined.data_ptr()
    target = Talker(tiny_config().talker_config)
    target.load_state_dict(state, strict=True)
    for (name, a), b in zip(source.named_parameters(), target.parameters(), strict=True):
        assert torch.equal(a, b), name


def test_a_missing_block_is_reported_by_the_joined_name():
    state = tiny_talker().state_dict()
    del state["model.layers.1.mlp.up_proj.weight"]
    result = Talker(tiny_config().talker_config).load_state_dict(state, strict=False)
    assert result.missing_keys == ["model.layers.1.mlp.gate_up_proj.weight"]
    assert result.unexpected_keys == ["model.layers.1.mlp.gate_proj.weight"]


def test_grouped_heads_and_tables_equal_their_own_weights():
    g = torch.Generator().manual_seed(1)
    heads, tables = GroupedLinear(15, 32, 2048), GroupedEmbedding(15, 2048, 64)
    head_state = {f"{j}.weight": torch.randn(2048, 32, generator=g) for j in range(15)}
    table_state = {f"{j}.weight": torch.randn(2048, 64, generator=g) for j in range(15)}
    heads.load_state_dict(head_state)
    tables.load_state_dict(table_state)
    x, codes = torch.randn(3, 1, 32, generator=g), torch.randint(0, 2048, (3, 15), generator=g)
    with torch.inference_mode():
        gathered = tables(codes)
        for j in range(15):
            own = F.embedding(codes[:, j], table_state[f"{j}.weight"])
            assert torch.equal(heads(x, j), F.linear(x, head_state[f"{j}.weight"]))
            assert torch.equal(tables.lookup(j, codes[:, j]), own)
            assert torch.equal(gathered[:, j], own)
            assert torch.equal(tables[j](codes[:, j]), own)  # indexing and iterating, as the ModuleList did
    assert len(list(tables)) == 15


@pytest.mark.parametrize("dtype", DTYPES)
def test_rope_with_folded_sign_equals_rotate_half(dtype):
    g = torch.Generator().manual_seed(2)
    for head_dim in (16, 64, 128):
        positions = torch.randint(0, 8192, (3, 5), generator=g)
        inv_freq = rope_inv_freq(head_dim, 1e6)
        x = (3 * torch.randn(3, 5, 6, head_dim, generator=g)).to(dtype)  # (B, L, heads, head_dim)
        cos, sin = rope_cos_sin(positions, inv_freq, dtype)
        expected = apply_rope(x.transpose(1, 2), cos, sin).transpose(1, 2)
        assert torch.equal(Rope.at(positions, inv_freq, dtype).rotate(x), expected)
        # a table of 0..15 sliced per step gives the bits of each step's own (the code predictor's use)
        table = Rope.at(torch.arange(16)[None], inv_freq, dtype)
        step = Rope.at(torch.tensor([[7]]), inv_freq, dtype)
        assert torch.equal(table.span(7, 8).cos, step.cos) and torch.equal(table.span(7, 8).sin, step.sin)


def official_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Qwen3RMSNorm as the official modules write it."""
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def official_attention(attn: Attention, x, positions, past_k, past_v):
    """The official op sequence: three projections, q_norm and k_norm apart, rotate_half RoPE, keys appended."""
    b, n, _ = x.shape
    state, hd, eps = attn.state_dict(), attn.head_dim, attn.q_norm.eps

    def heads(name):
        return F.linear(x, state[f"{name}_proj.weight"]).view(b, n, -1, hd)

    q = official_norm(heads("q"), state["q_norm.weight"], eps).transpose(1, 2)
    k = official_norm(heads("k"), state["k_norm.weight"], eps).transpose(1, 2)
    v = heads("v").transpose(1, 2)
    cos, sin = rope_cos_sin(positions, rope_inv_freq(hd, 1e6), x.dtype)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    k, v = torch.cat((past_k, k), dim=2), torch.cat((past_v, v), dim=2)
    out = F.scaled_dot_product_attention(q, k, v, is_causal=n > 1, scale=hd**-0.5, enable_gqa=True)
    return F.linear(out.transpose(1, 2).reshape(b, n, -1), state["o_proj.weight"]), k, v


@pytest.mark.parametrize("dtype", DTYPES)
def test_attention_and_mlp_equal_the_official_op_sequence(dtype):
    torch.manual_seed(4)
    attn, mlp = Attention(64, 4, 2, 32, 1e-6).to(dtype), MLP(64, 128).to(dtype)
    with torch.no_grad():
        for p in (attn.q_norm.weight, attn.k_norm.weight):
            p.normal_(1.0, 0.1)
    cache = KVCache.allocate(1, 1, 2, 16, 32, dtype)
    inv_freq = rope_inv_freq(32, 1e6)
    prompt, step = torch.randn(1, 9, 64).to(dtype), torch.randn(1, 1, 64).to(dtype)
    empty = torch.zeros(1, 2, 0, 32, dtype=dtype)
    with torch.inference_mode():
        expected, past_k, past_v = official_attention(attn, prompt, torch.arange(9)[None], empty, empty)
        at = AttnBatch(slice(0, 1), slice(0, 9), kv_len=9, fresh=True)
        got = attn(prompt, Rope.at(torch.arange(9)[None], inv_freq, dtype), cache.k[0], cache.v[0], at)
        assert torch.equal(got, expected)
        expected, _, _ = official_attention(attn, step, torch.tensor([[9]]), past_k, past_v)
        at = AttnBatch(torch.tensor([0]), torch.tensor([[9]]), kv_len=10)
        got = attn(step, Rope.at(torch.tensor([[9]]), inv_freq, dtype), cache.k[0], cache.v[0], at)
        assert torch.equal(got, expected)
        state = mlp.state_dict()
        gate, up = F.linear(prompt, state["gate_proj.weight"]), F.linear(prompt, state["up_proj.weight"])
        assert torch.equal(mlp(prompt), F.linear(F.silu(gate) * up, state["down_proj.weight"]))
        assert torch.equal(rms_normalize(prompt, torch.tensor(1e-6)), official_norm(prompt, torch.ones(()), 1e-6))
