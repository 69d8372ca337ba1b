"""The parity cases: each one is run by the official package and by ours on the same tiny checkpoint.

A case names its checkpoint (a key of the `checkpoints` fixture), its task and inputs, the official generation
arguments (`gen`), an optional seed set right before generation, and an optional dtype both sides load the weights in
(float32 unless named: the bfloat16 cases are what a GPU deployment runs, here on the CPU).
"""

from __future__ import annotations

GREEDY = {"do_sample": False, "subtalker_dosample": False, "max_new_tokens": 20}
SAMPLED = {"max_new_tokens": 20}  # the release's sampling defaults (temperature 0.9, top-k 50, penalty 1.05)
TEXT = "Hello from Voxtrace, the voice you hear was cloned."
REF_TEXT = "This is the reference clip."

CASES: list[dict] = [
    # voice clone: ICL and x-vector only, each with streaming and non-streaming text feeding
    {
        "name": "clone_icl_streaming",
        "checkpoint": "base",
        "task": "voice_clone",
        "text": TEXT,
        "language": "English",
        "ref": "mono",
        "ref_text": REF_TEXT,
        "non_streaming_mode": False,
        "gen": GREEDY,
    },
    {
        "name": "clone_icl_nonstreaming",
        "checkpoint": "base",
        "task": "voice_clone",
        "text": TEXT,
        "language": "Auto",
        "ref": "mono",
        "ref_text": REF_TEXT,
        "non_streaming_mode": True,
        "gen": GREEDY,
    },
    {
        "name": "clone_xvec_streaming",
        "checkpoint": "base",
        "task": "voice_clone",
        "text": TEXT,
        "language": "German",
        "ref": "stereo",
        "x_vector_only": True,
        "non_streaming_mode": False,
        "gen": GREEDY,
    },
    {
        "name": "clone_xvec_nonstreaming",
        "checkpoint": "base",
        "task": "voice_clone",
        "text": TEXT,
        "language": "Auto",
        "ref": "mono",
        "x_vector_only": True,
        "non_streaming_mode": True,
        "gen": GREEDY,
    },
    # custom voice: plain, with instruct, and a dialect speaker (Chinese -> the speaker's dialect id)
    {
        "name": "custom_plain",
        "checkpoint": "custom_voice",
        "task": "custom_voice",
        "text": TEXT,
        "language": "English",
        "speaker": "Vivian",
        "gen": GREEDY,
    },
    {
        "name": "custom_instruct",
        "checkpoint": "custom_voice",
        "task": "custom_voice",
        "text": TEXT,
        "language": "English",
        "speaker": "ryan",
        "instruct": "Speak slowly and warmly.",
        "gen": GREEDY,
    },
    {
        "name": "custom_dialect",
        "checkpoint": "custom_voice",
        "task": "custom_voice",
        "text": "你好，今天天气很好。",
        "language": "Chinese",
        "speaker": "eric",
        "non_streaming_mode": False,
        "gen": GREEDY,
    },
    # voice design
    {
        "name": "design",
        "checkpoint": "voice_design",
        "task": "voice_design",
        "text": TEXT,
        "language": "Auto",
        "instruct": "A deep, calm male voice with a slight rasp.",
        "gen": GREEDY,
    },
    # a run that stops on EOS before max_new_tokens
    {
        "name": "stops_on_eos",
        "checkpoint": "base_eos",
        "task": "voice_clone",
        "text": TEXT,
        "language": "English",
        "ref": "mono",
        "ref_text": REF_TEXT,
        "gen": {**GREEDY, "max_new_tokens": 60},
    },
    # seeded sampling, talker and code predictor both sampling
    {
        "name": "clone_sampled",
        "checkpoint": "base",
        "task": "voice_clone",
        "text": TEXT,
        "language": "English",
        "ref": "mono",
        "ref_text": REF_TEXT,
        "gen": SAMPLED,
        "seed": 1234,
    },
    {
        "name": "custom_sampled",
        "checkpoint": "custom_voice",
        "task": "custom_voice",
        "text": TEXT,
        "language": "Auto",
        "speaker": "dylan",
        "gen": SAMPLED,
        "seed": 7,
    },
    # the voice prompt alone: x-vector and reference codes, from a 24 kHz mono and a 16 kHz stereo clip
    {"name": "prompt_mono", "checkpoint": "base", "task": "voice_prompt", "ref": "mono", "ref_text": REF_TEXT},
    {"name": "prompt_stereo", "checkpoint": "base", "task": "voice_prompt", "ref": "stereo", "ref_text": REF_TEXT},
]

# bfloat16 weights (RoPE frequencies stay float32 on both sides): the voice prompt, greedy and seeded cloning
BF16 = {"dtype": "bfloat16"}
_BY_NAME = {c["name"]: c for c in CASES}
CASES += [
    {**_BY_NAME["prompt_mono"], "name": "prompt_bf16", **BF16},
    {**_BY_NAME["clone_icl_streaming"], "name": "clone_icl_bf16", **BF16},
    {**_BY_NAME["clone_sampled"], "name": "clone_sampled_bf16", "seed": 7, **BF16},
]
