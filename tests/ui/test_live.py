"""The page's Generate over HTTP (`ui.live`), sent as the player sends it: the form as JSON, the audio back framed per
engine chunk, and the run collected afterwards with what the listener heard."""

from __future__ import annotations

import json
import struct
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf
from gradio_client import Client

from tests.ui.conftest import RunningApp
from tests.ui.test_app_client import SYNTH_FIELDS
from ui.live import SYNTH_ROUTE

FORM = {**SYNTH_FIELDS, "task": "voice_design", "instruct": "A calm voice.", "text": "Hi there.", "max_new_tokens": 20}


def frames(body: bytes) -> tuple[list[np.ndarray], bool]:
    """The chunks of a framed body, and whether it ended complete (a frame of 0 samples)."""
    chunks, at = [], 0
    while at < len(body):
        (n,) = struct.unpack_from("<I", body, at)
        if n == 0:
            return chunks, at + 4 == len(body)
        chunks.append(np.frombuffer(body, "<f4", n, at + 4))
        at += 4 + 4 * n
    return chunks, False


def heard(chunks: int) -> dict[str, Any]:
    return {"first_sound_ms": 250.0, "chunks": chunks, "underruns": 0, "underrun_total_ms": 0.0, "worst_gap_ms": 0.0,
            "margin_ms": 15.0, "lead": [[100.0, 60.0]] * (chunks - 1)}  # fmt: skip


def test_the_player_gets_every_engine_chunk_and_the_page_gets_the_run(running_app: RunningApp) -> None:
    response = httpx.post(running_app.url + SYNTH_ROUTE, json={**FORM, "seed": 4}, timeout=120)
    assert response.status_code == 200 and response.headers["x-sample-rate"] == "24000"
    assert "serving engine (tiny-voice_design" in response.headers["x-engine"]
    chunks, complete = frames(response.content)
    assert complete and sum(len(c) for c in chunks) == 19 * 1920  # 20 draws -> 19 frames of 80 ms
    assert [len(c) // 1920 for c in chunks] == [2, 2, 4, 8, 3]  # the ramp: 2 first, then as long as all before
    client = Client(running_app.url + "/", verbose=False)
    report = json.dumps({"run": response.headers["x-run-id"], "heard": heard(len(chunks))})
    status, cards, seed, *_plots, files, _engines = client.predict(*FORM.values(), report, api_name="/synthesize")
    assert seed == 4 and "heard the first sound 250 ms after the click" in status
    assert "250 ms" in cards and "first sound (in your browser, from the click)" in cards
    assert "chunks (as the engine made them)" in cards and f">{len(chunks)}<" in cards  # one count for both
    (wav,) = [f for f in files if f.endswith(".wav")]
    np.testing.assert_allclose(sf.read(wav)[0], np.clip(np.concatenate(chunks), -1, 1), atol=2 / 32767)  # 16-bit
    metrics = json.loads(next(open(f).read() for f in files if f.endswith("metrics.json")))
    assert metrics["heard"]["first_sound_ms"] == 250.0
    assert metrics["heard"]["continuity"] == {"c50": 1.0, "c100": 1.0, "c200": 1.0, "requests": 1}
    again = client.predict(*FORM.values(), report, api_name="/synthesize")  # a run is collected once
    assert again[0].startswith("That run is not on this server") and again[1] is None


@pytest.mark.parametrize(
    "body,message",
    [
        ({**FORM, "text": ""}, "the text is empty"),  # the engine's own refusal, before any audio
        ({**FORM, "temperature": "hot"}, "temperature: missing or of the wrong type"),
        ({**FORM, "seed": True}, "seed: missing or of the wrong type"),  # a bool is no number
        ({**FORM, "do_sample": None}, "do_sample: missing or of the wrong type"),  # only text may come as null
        ({k: v for k, v in FORM.items() if k != "max_new_tokens"}, "max_new_tokens: missing"),
        ({**FORM, "task": "voice_clone"}, "ref_audio"),  # a clone without a clip
        ([1, 2], "the body must be a JSON object"),
    ],
)
def test_a_refused_form_is_one_message_naming_the_field(running_app: RunningApp, body: Any, message: str) -> None:
    response = httpx.post(running_app.url + SYNTH_ROUTE, json=body, timeout=60)
    assert response.status_code == 400
    error = response.json()["error"]
    assert message in error and "Error" not in error and "Traceback" not in error and "/" not in error


def test_a_forged_report_gets_a_message_not_a_crash(running_app: RunningApp) -> None:
    client = Client(running_app.url + "/", verbose=False)
    for report in ("{", json.dumps({"run": "nope", "heard": heard(2)}), json.dumps({"run": "x", "heard": [1]})):
        status, cards, *_ = client.predict(*FORM.values(), report, api_name="/synthesize")
        assert status.startswith("That run is not on this server") and cards is None


def test_the_download_is_16_bit_pcm_or_float_when_asked(running_app: RunningApp) -> None:
    client = Client(running_app.url + "/", verbose=False)
    subtypes = []
    for float_wav in (False, True):
        out = client.predict(*{**FORM, "seed": 1, "float_wav": float_wav}.values(), "", api_name="/synthesize")
        (wav,) = [f for f in out[-2] if f.endswith(".wav")]
        subtypes.append(sf.info(wav).subtype)
    assert subtypes == ["PCM_16", "FLOAT"]
