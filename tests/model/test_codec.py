"""The 12 Hz speech tokenizer on a tiny random config: streaming Code2Wav equals one-shot decoding, the decoder is
causal, and the encoder gives one 16-code frame per started 1920 samples. Parity with the official package is
checked by the parity tests; here only .venv is used."""

from __future__ import annotations

import math

import pytest
import torch

from engine.model.codec import Code2Wav, DecoderState, SpeechTokenizer
from engine.model.config import SpeechTokenizerConfig

TINY = {
    "model_type": "qwen3_tts_tokenizer_12hz",
    "encoder_config": {
        "num_filters": 8, "upsampling_ratios": [8, 6, 5, 4], "hidden_size": 32, "num_hidden_layers": 2,
        "num_attention_heads": 2, "num_key_value_heads": 2, "head_dim": 16, "intermediate_size": 64,
        "num_quantizers": 32, "codebook_size": 2048, "codebook_dim": 16, "vector_quantization_hidden_dimension": 16,
        "use_causal_conv": True, "upsample_groups": 32, "sampling_rate": 24000, "frame_rate": 12.5,
    },
    "decoder_config": {
        "latent_dim": 32, "codebook_dim": 32, "decoder_dim": 32, "hidden_size": 32, "intermediate_size": 64,
        "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 2, "head_dim": 16,
        "sliding_window": 72, "upsample_rates": [8, 5, 4, 3], "upsampling_ratios": [2, 2],
    },
}  # fmt: skip


def randomize_(model: torch.nn.Module, seed: int = 0) -> None:
    """Non-degenerate weights: HF-style init leaves codebooks at 0 and Snake/LayerScale at constants, which makes
    outputs constant. Scales keep the random decoder well conditioned (fp32 close to fp64)."""
    g = torch.Generator().manual_seed(seed)
    for name, t in model.state_dict().items():
        if not t.is_floating_point() or name.endswith("initialized"):
            continue
        leaf = name.rsplit(".", 1)[-1]
        r = torch.randn(t.shape, generator=g)
        if leaf == "cluster_usage":
            r = 0.5 + 1.5 * torch.rand(t.shape, generator=g)
        elif leaf in ("alpha", "beta"):
            r = 0.2 * r
        elif leaf in ("gamma", "scale"):
            r = 0.1 + 0.9 * torch.rand(t.shape, generator=g)
        elif t.dim() == 1:
            r = 1 + 0.1 * r if "norm" in name and leaf == "weight" else 0.1 * r
        elif leaf not in ("embedding_sum", "embed_sum"):
            r = r / math.sqrt(t[0].numel())
            if name.startswith("decoder.decoder.") and t.dim() == 3:
                r = r * (0.1 if t.shape[0] == 1 else 0.8)
        t.copy_(r)


@pytest.fixture(scope="module")
def tokenizer() -> SpeechTokenizer:
    # built once: constructing and randomising costs more than the tests themselves
    model = SpeechTokenizer(SpeechTokenizerConfig.from_dict(TINY)).eval()
    randomize_(model)
    return model


def random_codes(frames: int, batch: int = 1, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 2048, (batch, frames, 16), generator=torch.Generator().manual_seed(seed))


def stream(decoder: Code2Wav, codes: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """Decode `codes` chunk by chunk, cycling through `sizes`."""
    state, out, start, i = decoder.init_state(codes.shape[0]), [], 0, 0
    while start < codes.shape[1]:
        audio, state = decoder.decode_chunk(codes[:, start : start + sizes[i % len(sizes)]], state)
        out.append(audio)
        start, i = start + sizes[i % len(sizes)], i + 1
    assert int(state.pos[0]) == codes.shape[1]
    return torch.cat(out, dim=-1)


def test_state_dict_has_the_official_names(tokenizer: SpeechTokenizer) -> None:
    keys = set(tokenizer.state_dict())
    for name in (
        "decoder.pre_transformer.layers.1.self_attn_layer_scale.scale",
        "decoder.quantizer.rvq_rest.vq.layers.14._codebook.embedding_sum",
        "decoder.quantizer.rvq_first.input_proj.weight",
        "decoder.upsample.1.1.gamma",
        "decoder.decoder.4.block.4.act2.beta",
        "decoder.decoder.6.conv.weight",
        "encoder.quantizer.acoustic_residual_vector_quantizer.layers.30.codebook.embed_sum",
        "encoder.downsample.conv.weight",
        "encoder.encoder_transformer.layers.1.mlp.fc2.weight",
    ):
        assert name in keys
    assert not any(k.startswith(("encoder.decoder", "encoder.upsample")) for k in keys)  # Mimi's unused half
    copy = SpeechTokenizer(tokenizer.cfg)
    copy.load_state_dict(tokenizer.state_dict(), strict=True)


@torch.no_grad()
def test_decode_gives_1920_samples_per_frame_and_is_not_constant(tokenizer: SpeechTokenizer) -> None:
    audio = tokenizer.decoder.decode(random_codes(9, batch=2))
    assert audio.shape == (2, 9 * 1920)
    assert audio.std() > 1e-3 and not torch.equal(audio[0], audio[1])
    assert tokenizer.decode(random_codes(4)[0]).shape == (4 * 1920,)


@torch.no_grad()
@pytest.mark.parametrize("sizes", [[1], [5], [1, 2, 71, 1, 72, 73], [80]], ids=str)
def test_streamed_decoding_equals_one_shot(tokenizer: SpeechTokenizer, sizes: list[int]) -> None:
    codes = random_codes(150)
    one_shot = tokenizer.decoder.decode(codes)
    torch.testing.assert_close(stream(tokenizer.decoder, codes, sizes), one_shot, rtol=0, atol=1e-5)


@torch.no_grad()
def test_decoder_is_causal(tokenizer: SpeechTokenizer) -> None:
    codes = random_codes(100)
    full = tokenizer.decoder.decode(codes)
    for k in (1, 30, 73):
        torch.testing.assert_close(tokenizer.decoder.decode(codes[:, :k]), full[:, : k * 1920], rtol=0, atol=1e-5)


@torch.no_grad()
def test_states_of_requests_at_different_positions_decode_as_one_batch(tokenizer: SpeechTokenizer) -> None:
    decoder = tokenizer.decoder
    a, b = random_codes(90, seed=2), random_codes(90, seed=3)
    _, state_a = decoder.decode_chunk(a[:, :80], decoder.init_state())
    _, state_b = decoder.decode_chunk(b[:, :5], decoder.init_state())
    batched, state = decoder.decode_chunk(torch.cat([a[:, 80:86], b[:, 5:11]]), DecoderState.cat([state_a, state_b]))
    for row, (codes, start, alone) in enumerate([(a, 80, state_a), (b, 5, state_b)]):
        audio, next_alone = decoder.decode_chunk(codes[:, start : start + 6], alone)
        torch.testing.assert_close(batched[row : row + 1], audio, rtol=0, atol=1e-5)
        row_state = state.split()[row]
        torch.testing.assert_close(row_state.keys[-1], next_alone.keys[-1], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(row_state.tails[-1], next_alone.tails[-1], rtol=1e-5, atol=1e-5)
    assert state.pos.tolist() == [86, 11]


@pytest.mark.parametrize("samples", [1, 1919, 1920, 1921, 5000, 24077])
def test_encode_gives_one_frame_per_started_1920_samples(tokenizer: SpeechTokenizer, samples: int) -> None:
    audio = 0.3 * torch.randn(samples, generator=torch.Generator().manual_seed(samples))
    codes = tokenizer.encode(audio)
    assert codes.shape == (math.ceil(samples / 1920), 16) and codes.dtype == torch.int64
    assert 0 <= int(codes.min()) and int(codes.max()) < 2048


def test_encode_then_decode_round_trips_shapes(tokenizer: SpeechTokenizer) -> None:
    codes = tokenizer.encode(0.3 * torch.randn(24000, generator=torch.Generator().manual_seed(0)))
    assert len(set(codes.flatten().tolist())) > 16  # the random encoder is not degenerate
    assert tokenizer.decode(codes).shape == (codes.shape[0] * 1920,)


if __name__ == "__main__":
    raise SystemExit(pytest.main([__file__]))
