"""Talker and code predictor on the preallocated KV cache: state-dict layout, cache vs recompute, batching."""

from __future__ import annotations

import torch

from engine.model.layers import apply_rope, rope_cos_sin, rope_inv_freq
from engine.model.talker import Talker
from tests.model.tiny_talker import tiny_config, tiny_talker

torch.set_num_threads(1)
TOL = dict(atol=1e-5, rtol=1e-5)


def test_state_dict_has_the_official_talker_keys():
    keys = set(tiny_talker().state_dict())
    for key in (
        "model.layers.1.self_attn.q_norm.weight",
        "model.layers.0.mlp.gate_proj.weight",
        "model.norm.weight",
        "model.codec_embedding.weight",
        "model.text_embedding.weight",
        "text_projection.linear_fc1.bias",
        "text_projection.linear_fc2.weight",
        "codec_head.weight",
        "code_predictor.model.layers.1.self_attn.k_norm.weight",
        "code_predictor.model.codec_embedding.14.weight",
        "code_predictor.lm_head.14.weight",
        "code_predictor.small_to_mtp_projection.bias",
    ):
        assert key in keys
    assert not any("inv_freq" in k for k in keys)
    # with equal widths the projection is an Identity, without keys (the 0.6B layout)
    same_width = Talker(tiny_config(predictor_hidden=64).talker_config)
    assert not any("small_to_mtp" in k for k in same_width.state_dict())


def test_rope_is_identity_at_position_zero_and_preserves_norm():
    x = torch.randn(1, 2, 5, 32)
    cos, sin = rope_cos_sin(torch.arange(5)[None], rope_inv_freq(32, 1e6), x.dtype)
    y = apply_rope(x, cos, sin)
    assert torch.equal(y[:, :, 0], x[:, :, 0])
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1))


def test_kv_cache_decode_equals_full_recompute():
    talker = tiny_talker()
    embeds = torch.randn(1, 9, 64)
    cache = talker.allocate_cache(slots=1, capacity=16)
    talker.prefill(embeds[:, :8], cache, slot=0)
    logits, hidden = talker.decode_step(embeds[0, 8:], cache, torch.tensor([0]), torch.tensor([8]))
    full_logits, full_hidden = talker.prefill(embeds, talker.allocate_cache(1, 16), slot=0)
    torch.testing.assert_close(logits, full_logits, **TOL)
    torch.testing.assert_close(hidden, full_hidden, **TOL)


def test_batched_decode_rows_at_different_lengths_equal_each_row_alone():
    talker = tiny_talker()
    prompts = [torch.randn(1, 5, 64), torch.randn(1, 11, 64)]
    steps = torch.randn(2, 3, 64)  # three decode steps for each row
    shared = talker.allocate_cache(slots=3, capacity=20)
    slots = torch.tensor([2, 0])  # rows live in arbitrary cache slots
    for p, s in zip(prompts, slots.tolist(), strict=True):
        talker.prefill(p, shared, slot=s)
    lengths = torch.tensor([5, 11])
    for t in range(3):
        batched_logits, batched_hidden = talker.decode_step(steps[:, t], shared, slots, lengths + t)
        for b in range(2):
            alone = talker.allocate_cache(1, 20)
            talker.prefill(prompts[b], alone, slot=0)
            for u in range(t + 1):
                logits, hidden = talker.decode_step(
                    steps[b, u : u + 1], alone, torch.tensor([0]), lengths[b : b + 1] + u
                )
            torch.testing.assert_close(batched_logits[b : b + 1], logits, **TOL)
            torch.testing.assert_close(batched_hidden[b : b + 1], hidden, **TOL)


def test_code_predictor_batch_equals_rows_and_sums_the_frame_embedding():
    talker = tiny_talker()
    cp = talker.code_predictor
    hidden, code0 = torch.randn(3, 64), torch.tensor([5, 700, 2047])
    greedy = lambda _step, logits: logits.argmax(-1)  # noqa: E731
    with torch.inference_mode():
        code0_embed = talker.embed_codec(code0)
    codes, codec_sum = cp.predict(hidden, code0_embed, cp.allocate_cache(3), greedy)
    assert codes.shape == (3, 15) and codes.dtype == torch.int64 and int(codes.max()) < 2048
    for b in range(3):
        row_codes, row_sum = cp.predict(hidden[b : b + 1], code0_embed[b : b + 1], cp.allocate_cache(1), greedy)
        assert torch.equal(row_codes[0], codes[b])
        torch.testing.assert_close(row_sum[0], codec_sum[b], **TOL)
    with torch.inference_mode():  # the model's entry points run in inference mode; so must code mixing with them
        expected = talker.embed_codec(code0[0]) + sum(cp.model.codec_embedding[j](codes[0, j]) for j in range(15))
    torch.testing.assert_close(codec_sum[0], expected, **TOL)
