"""Saved voices through the HTTP API, as a client that serves the API uses them: create one from a clip (encoded
once), list, clone with it through the official `openai` client's `voice=`, delete; the app's picker sees the same
store."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
import soundfile as sf

from tests.ui.conftest import RunningApp


def b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def test_a_voice_made_once_clones_through_the_openai_client(running_app: RunningApp, clips: dict[str, Path]) -> None:
    url, library = running_app.url, running_app.state.voices
    prep = running_app.state.engines.serving.prep.voices
    made = httpx.post(url + "/v1/voices", json={"name": "api-anna", "audio": b64(clips["stereo"]),
                                                "ref_text": "What I said."}, timeout=60)  # fmt: skip
    assert made.status_code == 201, made.text
    assert made.json() == {"id": "api-anna", "object": "voice", "ref_text": "What I said.", "x_vector_only": False}
    assert "api-anna" in library.names()  # the app's saved voices: the same store
    listed = httpx.get(url + "/v1/voices", timeout=10).json()
    assert {"id": "api-anna", "object": "voice", "ref_text": "What I said.", "x_vector_only": False} in listed["data"]

    hits, misses = prep.hits, prep.misses
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused")
    speech = client.audio.speech.create(
        model="", voice="api-anna", input="Hello again.", response_format="wav",
        extra_body={"task_type": "voice_clone", "max_new_tokens": 6, "seed": 1},
    )  # fmt: skip
    audio, rate = sf.read(io.BytesIO(speech.read()))
    assert rate == 24000 and len(audio) == 5 * 1920 and np.abs(audio).max() > 0
    assert (prep.hits, prep.misses) == (hits + 1, misses)  # encoded when it was made, not again

    gone = httpx.delete(url + "/v1/voices/api-anna", timeout=10)
    assert gone.json() == {"id": "api-anna", "object": "voice", "deleted": True}
    assert "api-anna" not in library.names()
    with pytest.raises(openai.BadRequestError) as refused:  # an unknown voice is a 400 naming `voice`
        client.audio.speech.create(model="", voice="api-anna", input="Hi.", extra_body={"task_type": "voice_clone"})
    assert refused.value.body["param"] == "voice"


@pytest.mark.parametrize(
    "body,param",
    [
        ({"name": "a", "audio": "bm90IGF1ZGlv", "x_vector_only": True}, "audio"),  # "not audio"
        ({"name": "a", "audio": "/etc/passwd", "x_vector_only": True}, "audio"),  # a path is never read
        ({"name": "a", "audio": "CLIP"}, "ref_text"),  # ICL needs what the clip says
        ({"name": "../a", "audio": "CLIP", "x_vector_only": True}, "name"),
        ({"name": "a", "audio": "CLIP", "x_vector_only": "yes"}, "x_vector_only"),
        ({"name": "a", "audio": "CLIP", "extra": 1}, "extra"),
    ],
)
def test_a_bad_voice_is_refused_naming_its_field(running_app: RunningApp, clips, body, param) -> None:
    body = {k: b64(clips["mono"]) if v == "CLIP" else v for k, v in body.items()}
    answer = httpx.post(running_app.url + "/v1/voices", json=body, timeout=60)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["param"] == param and "Traceback" not in error["message"]
    assert "a" not in running_app.state.voices.names()


def test_a_taken_name_and_an_unknown_id(running_app: RunningApp, clips: dict[str, Path]) -> None:
    body = {"name": "api-twice", "audio": b64(clips["mono"]), "x_vector_only": True}
    assert httpx.post(running_app.url + "/v1/voices", json=body, timeout=60).status_code == 201
    again = httpx.post(running_app.url + "/v1/voices", json=body, timeout=60)
    assert again.status_code == 409 and again.json()["error"]["param"] == "name"  # never replaced
    missing = httpx.delete(running_app.url + "/v1/voices/nobody", timeout=10)
    assert missing.status_code == 404 and missing.json()["error"]["param"] == "voice"
    both = httpx.post(running_app.url + "/v1/audio/speech", timeout=30,
                      json={"input": "Hi.", "voice": "api-twice", "ref_audio": body["audio"]})  # fmt: skip
    assert both.status_code == 400 and both.json()["error"]["param"] == "voice"
    httpx.delete(running_app.url + "/v1/voices/api-twice", timeout=10)
