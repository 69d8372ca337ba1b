"""The talker stage on the tiny checkpoints: at concurrency 1 its frames equal the reference loop (`generate_codes`)
bit for bit; requests join and leave a running batch; chunks follow the chunking config and the credits; a bad job,
a cancel or a slow listener touches only its own request."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine.config import ChunkingConfig, DecodeConfig, StageConfig
from engine.model.audio import load_reference_audio
from engine.model.qwen3_tts import Qwen3TTS, SynthesisInput, VoicePrompt
from engine.model.sampling import SamplingParams
from engine.stages.messages import Cancel, CodeChunk, Credit, Failed, TalkerJob
from engine.stages.talker import TalkerStage
from telemetry import events

GREEDY = SamplingParams(do_sample=False, subtalker_dosample=False, max_new_tokens=20)
SEEDED = SamplingParams(max_new_tokens=20)  # the release's sampling settings
TEXTS = [
    "one two three",
    "the quick brown fox",
    "a somewhat longer sentence for the talker",
    "hi",
    "numbers 1 2 3 4 5",
    "good morning to you all",
    "yes",
    "what a lovely day it is",
]


@pytest.fixture(scope="module")
def models(checkpoints: dict[str, Path]) -> dict[str, Qwen3TTS]:
    names = ("base", "custom_voice", "voice_design", "base_eos")
    return {name: Qwen3TTS.from_pretrained(checkpoints[name]) for name in names}


@pytest.fixture(scope="module")
def icl_voice(models: dict[str, Qwen3TTS], clips: dict[str, Path]) -> VoicePrompt:
    clip = load_reference_audio(clips["mono"].read_bytes(), max_seconds=30)
    return models["base"].create_voice_prompt(clip, "a short reference clip")


def job(model: Qwen3TTS, rid: str, request: SynthesisInput, params: SamplingParams, seed: int | None, credits=99):
    """The TalkerJob the engine would send for `request` (tokenized, voice prepared)."""
    tok, voice = model.text_tokenizer, request.voice
    icl = voice is not None and voice.icl
    return TalkerJob(
        rid,
        tok.assistant_text_ids(request.text),
        request.language,
        params,
        seed,
        credits,
        speaker=request.speaker,
        instruct_ids=tok.instruct_ids(request.instruct) if request.instruct else None,
        x_vector=voice.x_vector if voice else None,
        ref_ids=tok.ref_text_ids(voice.ref_text) if icl else None,
        ref_codes=voice.ref_codes if icl else None,
        non_streaming=request.non_streaming_mode,
    )


OFFICIAL = DecodeConfig(sampling_mode="official")


def make_stage(
    model: Qwen3TTS, max_num_seqs=4, max_model_len=256, first=2, steady=4, decode=OFFICIAL, ramp=True
) -> TalkerStage:
    """A stage on the model; `official` sampling by default, so that seeded rows equal the reference loop."""
    stage = StageConfig(max_num_seqs=max_num_seqs, max_model_len=max_model_len)
    chunking = ChunkingConfig(first, steady, ramp)
    return TalkerStage(model.talker, model.config, stage, chunking, events.Recorder("test"), decode=decode)


def run(stage: TalkerStage) -> list:
    out = []
    while stage.has_work():
        out += stage.step()
    return out


def codes_of(out: list, rid: str) -> torch.Tensor:
    chunks = [c for c in out if isinstance(c, CodeChunk) and c.request_id == rid]
    assert [c.index for c in chunks] == list(range(len(chunks)))
    assert [c.is_last for c in chunks] == [False] * (len(chunks) - 1) + [True]
    return torch.cat([c.codes for c in chunks])


def held(stage: TalkerStage) -> list[str]:
    """The requests the stage keeps anything of: waiting jobs, then running rows and unsent chunks."""
    return [job.request_id for job in stage._waiting] + list(stage._chunks)


def clone(text: str, voice: VoicePrompt) -> SynthesisInput:
    return SynthesisInput(text, voice=voice)


@pytest.mark.parametrize(
    "params,seed,mode",
    [(GREEDY, None, "official"), (GREEDY, None, "fast"), (SEEDED, 1234, "official")],
    ids=["greedy", "greedy-fast", "seeded"],
)
@pytest.mark.parametrize("task", ["voice_clone_icl", "custom_voice", "voice_design"])
def test_alone_the_stage_gives_the_reference_codes(models, icl_voice, task, params, seed, mode):
    if task == "custom_voice":
        model, request = models["custom_voice"], SynthesisInput("hello there", speaker="serena")
    elif task == "voice_design":
        request = SynthesisInput("hello there", language="english", instruct="a calm low voice")
        model = models["voice_design"]
    else:
        model, request = models["base"], clone("hello there, this is a test", icl_voice)
    stage = make_stage(model, first=2, steady=5, decode=DecodeConfig(sampling_mode=mode))
    stage.submit(job(model, "a", request, params, seed))
    out = run(stage)

    reference = model.generate_codes(request, params, seed)
    assert reference.shape == (19, 16)  # max_new_tokens 20 draws give 19 frames
    assert torch.equal(codes_of(out, "a"), reference)
    assert [len(c.codes) for c in out] == [2, 2, 4, 5, 5, 1]  # the ramp: 2 first, then as long as all before
    if task != "voice_clone_icl":
        assert all(c.prefix_codes is None for c in out)
    else:  # Code2Wav warms its state on the reference codes, carried by the first chunk only
        assert torch.equal(out[0].prefix_codes, icl_voice.ref_codes)
        assert all(c.prefix_codes is None for c in out[1:])
    assert held(stage) == [] and not stage.has_work()


@pytest.mark.parametrize(
    "max_new_tokens,first,steady,ramp,sizes",
    [
        (13, 3, 4, False, [3, 4, 4, 1]),
        (12, 3, 4, False, [3, 4, 4]),
        (3, 3, 4, False, [2]),
        (1, 2, 4, False, [0]),
        (20, 2, 8, True, [2, 2, 4, 8, 3]),
        (12, 3, 4, True, [3, 3, 4, 1]),
    ],
    ids=["partial-last", "last-on-a-boundary-is-merged", "shorter-than-first", "no-frames", "ramp", "ramp-to-steady"],
)
def test_chunk_sizes_follow_the_config(models, icl_voice, max_new_tokens, first, steady, ramp, sizes):
    params = SamplingParams(do_sample=False, subtalker_dosample=False, max_new_tokens=max_new_tokens)
    stage = make_stage(models["base"], first=first, steady=steady, ramp=ramp)
    stage.submit(job(models["base"], "a", clone("chunk sizes", icl_voice), params, None))
    out = run(stage)
    assert [len(c.codes) for c in out] == sizes
    assert codes_of(out, "a").shape == (max_new_tokens - 1, 16)


def test_requests_join_and_leave_the_running_batch(models, icl_voice):
    """8 requests of different lengths, arriving every 3 steps into 4 slots: each gets the codes it gets alone."""
    model = models["base"]
    x_vector_only = VoicePrompt(icl_voice.x_vector)
    requests = [clone(text, icl_voice if i % 2 else x_vector_only) for i, text in enumerate(TEXTS)]
    params = [SamplingParams(do_sample=False, subtalker_dosample=False, max_new_tokens=6 + 3 * i) for i in range(8)]
    stage = make_stage(model, max_num_seqs=4)
    out, submitted, steps = [], 0, 0
    while submitted < 8 or stage.has_work():
        if submitted < 8 and steps % 3 == 0:
            stage.submit(job(model, f"r{submitted}", requests[submitted], params[submitted], None))
            submitted += 1
        out += stage.step()
        steps += 1
        assert len(stage._rows) <= 4

    for i in range(8):
        assert torch.equal(codes_of(out, f"r{i}"), model.generate_codes(requests[i], params[i])), f"r{i}"
    # the requests really shared decode steps, and the timeline says so
    timeline = events.merge_timelines([stage.recorder.drain()])
    decode_steps = timeline.select(name=events.DECODE_STEP, track=events.TALKER)
    assert max(e.args["batch_size"] for e in decode_steps) == 4
    assert all(len(e.args["requests"]) == e.args["batch_size"] for e in decode_steps)
    assert len(timeline.select(name=events.PREDICTOR)) == len(decode_steps)
    assert {e.request for e in timeline.select(name=events.PREFILL)} == {f"r{i}" for i in range(8)}
    assert len(timeline.select(name=events.CHUNK_EMIT)) == sum(isinstance(c, CodeChunk) for c in out)
    assert set(timeline.milestones("r5")) == {events.PREFILL_START, events.FIRST_CODE_CHUNK}
    assert timeline.select(name=events.IN_FLIGHT)[-1].args["value"] == 0


def test_seeded_rows_in_a_batch_keep_their_own_draws(models, icl_voice):
    """Each row samples from its own generator, so its neighbours do not change its draws (the tiny model's margins
    also keep batch-size rounding from flipping a draw; a large model may differ in rare near-ties)."""
    model = models["base"]
    requests = [clone(text, icl_voice) for text in TEXTS[:4]]
    stage = make_stage(model)
    for i, request in enumerate(requests):
        stage.submit(job(model, f"r{i}", request, SEEDED, seed=10 + i))
    out = run(stage)
    for i, request in enumerate(requests):
        assert torch.equal(codes_of(out, f"r{i}"), model.generate_codes(request, SEEDED, seed=10 + i))


def test_a_cancel_frees_the_slot_for_the_next_request(models, icl_voice):
    model = models["base"]
    stage = make_stage(model, max_num_seqs=1)
    long = SamplingParams(do_sample=False, subtalker_dosample=False, max_new_tokens=100)
    stage.submit(job(model, "a", clone("a long one", icl_voice), long, None))
    stage.submit(job(model, "b", clone("the next one", icl_voice), GREEDY, None))
    out = [stage.step() for _ in range(3)]
    assert held(stage) == ["b", "a"]  # b waits: a holds the only slot
    stage.submit(Cancel("a"))
    assert held(stage) == ["b"]
    out = run(stage)
    assert all(c.request_id == "b" for c in out)
    assert torch.equal(codes_of(out, "b"), model.generate_codes(clone("the next one", icl_voice), GREEDY))


def test_a_request_without_credits_pauses_while_others_go_on(models, icl_voice):
    model = models["base"]
    slow, fast = clone("a slow listener", icl_voice), clone("a fast listener", icl_voice)
    stage = make_stage(model, first=2, steady=2)
    stage.submit(job(model, "slow", slow, GREEDY, None, credits=1))
    stage.submit(job(model, "fast", fast, GREEDY, None))
    out = run(stage)  # returns once only the paused row is left
    assert [len(c.codes) for c in out if c.request_id == "slow"] == [2]
    assert torch.equal(codes_of(out, "fast"), model.generate_codes(fast, GREEDY))
    assert held(stage) == ["slow"] and not stage.has_work()
    steps = stage.recorder.drain()
    assert sum("slow" in e.args["requests"] for e in steps if e.name == events.DECODE_STEP) == 4  # 2 + 2 pending

    stage.submit(Credit("slow", 1))
    out += run(stage)  # the pending chunk goes out; the row runs until the next one is full
    assert [len(c.codes) for c in out if c.request_id == "slow"] == [2, 2]
    assert held(stage) == ["slow"] and not stage.has_work()
    stage.submit(Credit("slow", 99))
    out += run(stage)
    assert torch.equal(codes_of(out, "slow"), model.generate_codes(slow, GREEDY))


def test_a_bad_job_fails_alone(models, icl_voice):
    model = models["base"]
    stage = make_stage(model, max_model_len=64)
    long_text = SynthesisInput(" ".join(["word"] * 80), voice=icl_voice, non_streaming_mode=True)
    stage.submit(job(model, "long", long_text, GREEDY, None))  # the whole text in the prompt
    ok = clone("short", VoicePrompt(icl_voice.x_vector))  # x-vector only: a short prompt
    stage.submit(job(model, "ok", ok, GREEDY, None))
    no_voice = job(model, "no-voice", clone("short", icl_voice), GREEDY, None)
    no_voice.x_vector = None
    stage.submit(no_voice)
    out = run(stage)
    failed = {f.request_id: f.message for f in out if isinstance(f, Failed)}
    assert set(failed) == {"long", "no-voice"}
    assert "max_model_len 64" in failed["long"] and "x_vector" in failed["no-voice"]
    assert torch.equal(codes_of(out, "ok"), model.generate_codes(ok, GREEDY))


def test_a_row_that_raises_in_the_decode_step_fails_alone(models, icl_voice):
    """Sampling settings that got past every check (a nan temperature makes every probability nan) raise inside the
    real step: that row fails alone, and the rows batched with it, seeded and greedy, get the codes they get alone
    (the seeded one drew before the failing row did: its generator is rewound for the retry)."""
    model = models["base"]
    seeded, greedy, broken = (clone(text, icl_voice) for text in TEXTS[:3])
    nan_temperature = SamplingParams(max_new_tokens=20)
    nan_temperature.temperature = float("nan")
    stage = make_stage(model)
    stage.submit(job(model, "seeded", seeded, SEEDED, seed=5))
    stage.submit(job(model, "broken", broken, nan_temperature, seed=6))
    stage.submit(job(model, "greedy", greedy, GREEDY, None))
    out = run(stage)

    assert [(f.request_id, f.message) for f in out if isinstance(f, Failed)] == [
        ("broken", "talker: the decode step failed")
    ]
    assert not [c for c in out if isinstance(c, CodeChunk) and c.request_id == "broken"]
    assert torch.equal(codes_of(out, "seeded"), model.generate_codes(seeded, SEEDED, seed=5))
    assert torch.equal(codes_of(out, "greedy"), model.generate_codes(greedy, GREEDY))
    steps = [e for e in stage.recorder.drain() if e.name == events.DECODE_STEP]
    assert steps[0].args["requests"] == ["seeded", "broken"]  # they were batched: the step was split to find it
    assert held(stage) == [] and sorted(stage._free) == [0, 1, 2, 3]


def test_the_slot_of_a_failed_row_is_clean_for_the_next_request(models, icl_voice):
    """A row whose prompt turned to nan (a broken x-vector) leaves nan keys and values in its slot; the next request
    in that slot, batched with a longer row, attends to those columns through its mask, so the slot must be cleared."""
    model = models["base"]
    long = clone(TEXTS[2] + " " + TEXTS[5], icl_voice)
    poisoned = job(model, "poisoned", clone(TEXTS[7] + " " + TEXTS[4], icl_voice), SEEDED, seed=1)
    poisoned.x_vector = torch.full_like(poisoned.x_vector, float("nan"))
    short = clone("hi", VoicePrompt(icl_voice.x_vector))
    stage = make_stage(model, max_num_seqs=2)
    stage.submit(job(model, "long", long, GREEDY, None))
    stage.submit(poisoned)
    out = stage.step()  # both prefilled; the batched step fails for the poisoned row only
    assert [f.request_id for f in out if isinstance(f, Failed)] == ["poisoned"]
    stage.submit(job(model, "short", short, GREEDY, None))
    out += run(stage)
    assert torch.equal(codes_of(out, "short"), model.generate_codes(short, GREEDY))
    assert torch.equal(codes_of(out, "long"), model.generate_codes(long, GREEDY))


def test_max_model_len_caps_the_frames(models, icl_voice):
    """Every position must fit the KV cache row: a prompt of L positions leaves room for max_model_len - L + 1
    frames (the last frame needs no decode step)."""
    model, request = models["base"], clone("capped", icl_voice)
    prompt_len = model.build_prompt(request).embeds.shape[1]
    stage = make_stage(model, max_model_len=prompt_len + 5)
    stage.submit(job(model, "a", request, GREEDY, None))
    codes = codes_of(run(stage), "a")
    assert codes.shape[0] == 6
    assert torch.equal(codes, model.generate_codes(request, GREEDY)[:6])


def test_eos_stops_a_request_early(models):
    model = models["base_eos"]
    x_vector = torch.randn(model.config.talker_config.hidden_size, generator=torch.Generator().manual_seed(0))
    request = SynthesisInput("stop soon", voice=VoicePrompt(x_vector))
    params = SamplingParams(do_sample=False, subtalker_dosample=False, max_new_tokens=200)
    reference = model.generate_codes(request, params)
    assert 0 < reference.shape[0] < 199
    stage = make_stage(model, first=1, steady=2)
    stage.submit(job(model, "a", request, params, None))
    assert torch.equal(codes_of(run(stage), "a"), reference)

    # EOS right after a full chunk: the stage learns of the end one step later, so the last chunk is empty
    frames = reference.shape[0]
    stage = make_stage(model, first=frames, steady=2)
    stage.submit(job(model, "b", request, params, None))
    out = run(stage)
    assert [len(c.codes) for c in out] == [frames, 0]
    assert torch.equal(codes_of(out, "b"), reference)


if __name__ == "__main__":
    raise SystemExit(pytest.main([__file__]))


def fast(**settings) -> DecodeConfig:
    return DecodeConfig(sampling_mode="fast", **settings)


def test_fast_draws_are_a_function_of_the_seed(models, icl_voice):
    """`fast` rows draw from (seed, step, code position): the same seed repeats its codes in another batch and
    another run, another seed draws others, and the settings still apply (top_k 1 is greedy)."""
    model = models["base"]
    requests = [clone(text, icl_voice) for text in TEXTS[:3]]
    stage = make_stage(model, decode=fast())
    for i, request in enumerate(requests):
        stage.submit(job(model, f"r{i}", request, SEEDED, seed=7))
    stage.submit(job(model, "other-seed", requests[0], SEEDED, seed=8))
    top_1 = SamplingParams(top_k=1, subtalker_top_k=1, max_new_tokens=20)
    stage.submit(job(model, "top-1", requests[1], top_1, seed=7))
    batched = run(stage)

    alone = make_stage(model, decode=fast())
    alone.submit(job(model, "r0", requests[0], SEEDED, seed=7))
    assert torch.equal(codes_of(run(alone), "r0"), codes_of(batched, "r0"))
    assert not torch.equal(codes_of(batched, "other-seed"), codes_of(batched, "r0"))
    assert torch.equal(codes_of(batched, "top-1"), model.generate_codes(requests[1], GREEDY))


def test_batch_invariant_rows_give_the_same_codes_alone_and_in_a_full_batch(models, icl_voice):
    """With `batch_invariant` every step runs at one shape, so a seeded request's codes inside a batch of 16 (other
    texts, other lengths, leaving as it goes on) equal its codes alone, and so do the last logits and hidden state
    it leaves in its slot, bit for bit (those differ in the last bits without it: the tiny model's codes alone would
    not show it)."""
    model = models["base"]
    target = clone("the request we follow", icl_voice)
    invariant = fast(batch_invariant=True)

    alone = make_stage(model, max_num_seqs=16, decode=invariant)
    alone.submit(job(model, "target", target, SEEDED, seed=3))
    expected = codes_of(run(alone), "target")

    crowded = make_stage(model, max_num_seqs=16, decode=invariant)
    for i in range(15):
        params = SamplingParams(max_new_tokens=3 + i, temperature=0.5 + i / 10, top_k=10 * i)
        crowded.submit(job(model, f"r{i}", clone(TEXTS[i % len(TEXTS)], icl_voice), params, seed=100 + i))
    out = crowded.step()
    crowded.submit(job(model, "target", target, SEEDED, seed=3))
    slot = None
    while crowded.has_work():
        out += crowded.step()
        slot = crowded._rows["target"].slot if "target" in crowded._rows else slot
    assert torch.equal(codes_of(out, "target"), expected)
    # the target finished last: the final state it left in its slot is still there (slot 0 alone)
    assert torch.equal(crowded.table.logits[slot], alone.table.logits[0])
    assert torch.equal(crowded.table.hidden[slot], alone.table.hidden[0])
    sizes = {e.args["batch_size"] for e in crowded.recorder.drain() if e.name == events.DECODE_STEP}
    assert len(sizes) > 3  # rows came and went around it


def test_a_row_whose_scores_are_not_numbers_fails_alone_in_fast_mode(models, icl_voice):
    """A nan temperature that got past every check: the row is flagged in the step's read-back and fails alone; its
    neighbours' codes are those they get without it."""
    model = models["base"]
    seeded, broken = clone(TEXTS[0], icl_voice), clone(TEXTS[1], icl_voice)
    nan_temperature = SamplingParams(max_new_tokens=20)
    nan_temperature.temperature = float("nan")
    stage = make_stage(model, decode=fast())
    stage.submit(job(model, "seeded", seeded, SEEDED, seed=5))
    stage.submit(job(model, "broken", broken, nan_temperature, seed=6))
    out = run(stage)
    assert [(f.request_id, f.message) for f in out if isinstance(f, Failed)] == [
        ("broken", "talker: the decode step failed")
    ]
    alone = make_stage(model, decode=fast())
    alone.submit(job(model, "seeded", seeded, SEEDED, seed=5))
    assert torch.equal(codes_of(out, "seeded"), codes_of(run(alone), "seeded"))
    assert held(stage) == [] and sorted(stage._free) == [0, 1, 2, 3]
