"""Talker prompt layouts per task, and the reference generation loop's stopping rules."""

from __future__ import annotations

import dataclasses
from collections import Counter

import pytest
import torch

from engine.model.generate import generate_codes
from engine.model.prompt import PromptError, build_prompt, build_task_prompt, icl_trim_start
from engine.model.sampling import SamplingParams
from tests.model.tiny_talker import text_ids, tiny_config, tiny_talker, wrapped_ids

torch.set_num_threads(1)
CFG = tiny_config()
TALKER = tiny_talker(cfg=CFG)
GREEDY = dict(do_sample=False, subtalker_dosample=False)


def test_streaming_text_feeds_the_first_body_token_in_prefill_and_the_rest_per_step():
    # role 3 + codec prefix (think, think_bos, lang, think_eos, x-vector, pad) + first text token with bos
    p = build_prompt(TALKER, CFG, text_ids(9), "english", xvector=torch.randn(64))
    assert p.embeds.shape == (1, 3 + 6 + 1, 64)
    assert p.trailing.shape == (9 - 1 + 1, 64)  # body[1:] + tts_eos
    auto = build_prompt(TALKER, CFG, text_ids(9), xvector=torch.randn(64))
    assert auto.embeds.shape[1] == 9  # "auto" has no language slot


def test_non_streaming_puts_all_text_in_the_prefill():
    p = build_prompt(TALKER, CFG, text_ids(7), "english", speaker="serena", non_streaming=True)
    assert p.embeds.shape[1] == 3 + 6 + (7 + 1) + 1
    assert p.trailing.shape == (1, 64) and torch.equal(p.trailing[0], p.tts_pad)


def test_instruct_is_prepended_and_dropped_for_the_06b_custom_voice():
    ins = wrapped_ids(5)
    with_ins = build_task_prompt(TALKER, CFG, text_ids(4), "english", speaker="serena", instruct_ids=ins)
    plain = build_task_prompt(TALKER, CFG, text_ids(4), "english", speaker="serena")
    assert with_ins.embeds.shape[1] == plain.embeds.shape[1] + ins.shape[1]
    small = tiny_config(tts_model_size="0b6")
    dropped = build_task_prompt(TALKER, small, text_ids(4), "english", speaker="serena", instruct_ids=ins)
    assert torch.equal(dropped.embeds, plain.embeds)


def test_dialect_speaker_switches_chinese_and_auto_to_the_dialect_id():
    ids = text_ids(4)
    zh = build_prompt(TALKER, CFG, ids, "chinese", speaker="eric")
    auto = build_prompt(TALKER, CFG, ids, "auto", speaker="eric")
    dialect = build_prompt(TALKER, CFG, ids, "sichuan_dialect", speaker="eric")
    en = build_prompt(TALKER, CFG, ids, "english", speaker="eric")
    assert torch.equal(zh.embeds, dialect.embeds) and torch.equal(auto.embeds, dialect.embeds)
    assert not torch.equal(en.embeds, dialect.embeds)


@pytest.mark.parametrize("frames, text_rows_left", [(3, 5), (20, 0)])
def test_icl_streaming_aligns_text_with_reference_frames(frames, text_rows_left):
    # text = ref body 5 + body 3 + tts_eos = 9 rows; codec = bos + frames
    ref_codes = torch.randint(0, 2048, (frames, 16))
    p = build_prompt(
        TALKER, CFG, text_ids(3), "english", xvector=torch.randn(64), ref_ids=wrapped_ids(5), ref_codes=ref_codes
    )
    assert p.embeds.shape[1] == 3 + 6 + frames + 1
    if text_rows_left:
        assert p.trailing.shape[0] == 9 - (frames + 1) == text_rows_left
    else:
        assert p.trailing.shape == (1, 64) and torch.equal(p.trailing[0], p.tts_pad)


def test_icl_non_streaming_prefills_text_then_reference_frames():
    p = build_prompt(
        TALKER,
        CFG,
        text_ids(3),
        "english",
        xvector=torch.randn(64),
        ref_ids=wrapped_ids(5),
        ref_codes=torch.randint(0, 2048, (6, 16)),
        non_streaming=True,
    )
    assert p.embeds.shape[1] == 3 + 6 + 9 + 7


def test_unknown_speaker_or_language_is_refused():
    with pytest.raises(ValueError, match="speaker"):
        build_prompt(TALKER, CFG, text_ids(3), speaker="nobody")
    with pytest.raises(ValueError, match="language"):
        build_prompt(TALKER, CFG, text_ids(3), "klingon")


def test_the_task_prompt_is_the_checkpoints_layout_with_the_official_text_mode():
    ids, xvector, ref_codes = text_ids(5), torch.randn(64), torch.randint(0, 2048, (4, 16))
    base = dataclasses.replace(CFG, tts_model_type="base")
    icl = build_task_prompt(TALKER, base, ids, "english", xvector=xvector, ref_ids=wrapped_ids(3), ref_codes=ref_codes)
    expected = build_prompt(TALKER, CFG, ids, "english", xvector=xvector, ref_ids=wrapped_ids(3), ref_codes=ref_codes)
    assert torch.equal(icl.embeds, expected.embeds)  # voice clone streams its text by default
    speaker = build_task_prompt(TALKER, CFG, ids, "english", speaker="serena", xvector=xvector)  # x-vector unused
    assert torch.equal(
        speaker.embeds, build_prompt(TALKER, CFG, ids, "english", speaker="serena", non_streaming=True).embeds
    )
    design = dataclasses.replace(CFG, tts_model_type="voice_design")
    described = build_task_prompt(TALKER, design, ids, "english", speaker="serena", instruct_ids=wrapped_ids(4))
    assert torch.equal(
        described.embeds,
        build_prompt(TALKER, CFG, ids, "english", instruct_ids=wrapped_ids(4), non_streaming=True).embeds,
    )


@pytest.mark.parametrize(
    "model_type, inputs, field",
    [
        ("base", {}, "voice"),
        ("base", {"xvector": torch.randn(64), "ref_ids": wrapped_ids(3)}, "voice"),  # ICL without reference codes
        ("custom_voice", {}, "speaker"),
        ("custom_voice", {"speaker": "nobody"}, "speaker"),
    ],
)
def test_the_task_prompt_refuses_a_missing_input_by_name(model_type, inputs, field):
    cfg = dataclasses.replace(CFG, tts_model_type=model_type)
    with pytest.raises(PromptError) as refused:
        build_task_prompt(TALKER, cfg, text_ids(3), "english", **inputs)
    assert refused.value.field == field


def test_icl_trim_cuts_the_reference_share_of_the_samples():
    assert icl_trim_start(ref_frames=10, total_frames=40, num_samples=76800) == 19200
    assert icl_trim_start(0, 0, 100) == 0


def test_icl_trim_is_the_frame_boundary_or_one_sample_before_it_as_the_total_falls():
    """The official int(ref / total × N) over 1..400 reference frames and 1..4000 generated ones: never more than one
    sample before the boundary, and which of the two changes with the total (15 + 7 early, 15 + 8 not), so a stream
    cannot know its first sample's place before it knows its end."""
    spf = 1920
    early = Counter(
        ref * spf - icl_trim_start(ref, total, total * spf)
        for ref in range(1, 401)
        for total in range(ref + 1, ref + 4001)
    )
    assert sorted(early) == [0, 1] and 0.03 < early[1] / early.total() < 0.06
    assert icl_trim_start(15, 22, 22 * spf) == 15 * spf - 1 and icl_trim_start(15, 23, 23 * spf) == 15 * spf
    # a default first chunk (2 frames) that is also the last never needs the early cut, for any clip up to 320 s
    assert all(icl_trim_start(ref, ref + n, (ref + n) * spf) == ref * spf for ref in range(1, 4001) for n in (1, 2))


def test_max_new_tokens_draws_give_one_frame_less():
    prompt = build_prompt(TALKER, CFG, text_ids(5), "english", speaker="serena")
    codes = generate_codes(TALKER, prompt, SamplingParams(max_new_tokens=6, **GREEDY))
    assert codes.shape == (5, 16) and codes.dtype == torch.int64
    assert int(codes.max()) < 2048


def test_eos_stops_and_is_not_returned():
    talker = tiny_talker(seed=3, eos_scale=4.0, cfg=CFG)
    prompt = build_prompt(talker, CFG, text_ids(5), "english", speaker="serena")
    lengths = []
    for seed in range(4):
        codes = generate_codes(talker, prompt, SamplingParams(max_new_tokens=30), torch.Generator().manual_seed(seed))
        lengths.append(codes.shape[0])
        assert (codes[:, 0] != CFG.talker_config.codec_eos_token_id).all()
    assert min(lengths) >= 2 and max(lengths) < 29, lengths  # EOS is masked for the first two draws, then ends runs


def test_seeded_generation_repeats():
    prompt = build_prompt(TALKER, CFG, text_ids(5), "english", speaker="serena")
    params = SamplingParams(max_new_tokens=5)
    a = generate_codes(TALKER, prompt, params, torch.Generator().manual_seed(3))
    b = generate_codes(TALKER, prompt, params, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
