"""The OpenAI-compatible speech API against a real server: uvicorn on 127.0.0.1 serving a real engine on the tiny
checkpoints, called with the `openai` client and with raw HTTP."""

from __future__ import annotations

import base64
import inspect
import io
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
import openai
import pytest
import soundfile as sf
import uvicorn
from fastapi import FastAPI

from engine import Engine, EngineConfig
from engine.config import LimitsConfig
from tests.conftest import voice_like_clip
from ui.server import ApiLimits, create_server, serve

REF_TEXT = "This is the reference clip."
SAMPLES_PER_FRAME = 1920  # 80 ms at 24 kHz
BODY_LIMIT = 1 << 20
IN_FLIGHT_LIMIT = 2
MAX_REF_SECONDS = 5.0
MAX_TEXT_CHARS = 300


@dataclass
class Live:
    """A server running in a thread, and what the tests look at behind it."""

    url: str
    engine: Engine
    app: FastAPI

    @property
    def in_flight(self) -> int:
        return self.app.state.api.gate.in_flight

    def wait_idle(self, timeout: float = 10.0) -> float:
        """Seconds until no request is left in the API or the talker (fails past `timeout`)."""
        start = time.monotonic()
        while self.in_flight or self.engine._stages["talker"].in_flight():
            assert time.monotonic() - start < timeout, "the server did not free the request"
            time.sleep(0.01)
        return time.monotonic() - start


def run_server(engine: Engine, limits: ApiLimits) -> Iterator[Live]:
    """uvicorn in a daemon thread on a socket bound here (port 0: no race for a free port); stopped cleanly."""
    app = create_server(engine, limits)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield Live(f"http://127.0.0.1:{sock.getsockname()[1]}", engine, app)
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()
        engine.close()


# Engines are module-scoped because each start costs seconds; the limits are small so the tests can reach them.
@pytest.fixture(scope="module")
def base(checkpoints) -> Iterator[Live]:
    limits = LimitsConfig(max_ref_seconds=MAX_REF_SECONDS, max_text_chars=MAX_TEXT_CHARS)
    engine = Engine(EngineConfig(model=str(checkpoints["base"]), limits=limits))
    yield from run_server(engine, ApiLimits(max_body_bytes=BODY_LIMIT, max_in_flight=IN_FLIGHT_LIMIT))


@pytest.fixture(scope="module")
def custom(checkpoints) -> Iterator[Live]:
    yield from run_server(Engine(EngineConfig(model=str(checkpoints["custom_voice"]))), ApiLimits())


@pytest.fixture(scope="module")
def http(base: Live) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base.url + "/v1", timeout=60) as client:
        yield client


def wav_bytes(samples: np.ndarray, rate: int) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


REF_CLIP = wav_bytes(voice_like_clip(2.0, 16000), 16000)
REF_B64 = base64.b64encode(REF_CLIP).decode()


def clone(**fields: Any) -> dict[str, Any]:
    """A short voice-clone body (10 frames at most); `fields` override."""
    body = {"input": "Hello from the API.", "language": "English", "ref_audio": REF_B64, "ref_text": REF_TEXT}
    return {**body, "max_new_tokens": 10, "seed": 7, **fields}


# -- the openai client ------------------------------------------------------------------------------------------


def test_the_openai_client_gets_a_wav_file(base: Live) -> None:
    client = openai.OpenAI(base_url=base.url + "/v1", api_key="unused")
    model = client.models.list().data[0].id
    extra = {"ref_audio": REF_B64, "ref_text": REF_TEXT, "language": "English", "max_new_tokens": 12, "seed": 3}
    audio = client.audio.speech.create(
        model=model, voice="unused", input="Hello from the OpenAI client.", response_format="wav", extra_body=extra
    )
    samples, rate = sf.read(io.BytesIO(audio.content), dtype="int16")
    frames = int(audio.response.headers["x-voxtrace-frames"])
    assert rate == 24000 and 1 <= frames <= 12
    assert len(samples) == frames * SAMPLES_PER_FRAME
    assert audio.response.headers["content-type"] == "audio/wav"
    assert audio.response.headers["x-voxtrace-seed"] == "3"
    assert float(audio.response.headers["x-voxtrace-time-to-first-audio-ms"]) > 0


def test_the_openai_client_streams_the_same_pcm_as_one_file(base: Live, http: httpx.Client) -> None:
    client = openai.OpenAI(base_url=base.url + "/v1", api_key="unused")
    extra = {"ref_audio": REF_B64, "ref_text": REF_TEXT, "language": "English", "max_new_tokens": 12, "seed": 11}
    extra["stream"] = True  # vLLM-Omni's field; OpenAI's own API streams every response
    pieces = []
    with client.audio.speech.with_streaming_response.create(
        model="base", voice="unused", input="Streaming from the OpenAI client.", response_format="pcm", extra_body=extra
    ) as response:
        assert response.headers["transfer-encoding"] == "chunked"
        pieces = list(response.iter_bytes())
    one_file = clone(**extra, input="Streaming from the OpenAI client.", response_format="pcm")
    whole = http.post("/audio/speech", json={**one_file, "stream": False})
    assert whole.status_code == 200 and whole.headers["content-type"] == "audio/pcm"
    assert b"".join(pieces) == whole.content
    assert len(whole.content) == int(whole.headers["x-voxtrace-frames"]) * SAMPLES_PER_FRAME * 2


# -- streaming ----------------------------------------------------------------------------------------------------


def test_a_stream_starts_before_the_request_finishes(base: Live, http: httpx.Client) -> None:
    start = time.monotonic()
    with http.stream("POST", "/audio/speech", json=clone(max_new_tokens=120, stream=True)) as response:
        assert response.status_code == 200
        chunks = response.iter_raw()
        first = next(chunks)
        first_at = time.monotonic() - start
        # when the first bytes are here, the talker is still generating this request
        assert response.headers["x-voxtrace-request-id"] in base.engine._stages["talker"].in_flight()
        rest = b"".join(chunks)
    total = time.monotonic() - start
    assert first_at < total / 3
    header, audio = first[:44], first[44:] + rest
    assert header[:4] == b"RIFF" and header[4:8] == b"\xff\xff\xff\xff" and header[40:44] == b"\xff\xff\xff\xff"
    assert len(audio) % (SAMPLES_PER_FRAME * 2) == 0
    samples, rate = sf.read(io.BytesIO(first + rest), dtype="int16", frames=len(audio) // 2)
    assert rate == 24000 and len(samples) == len(audio) // 2  # a streaming WAV a reader accepts
    base.wait_idle()  # the finished stream leaves the API and the talker


def test_a_client_that_disconnects_cancels_its_request(base: Live, http: httpx.Client) -> None:
    with http.stream("POST", "/audio/speech", json=clone(max_new_tokens=2000, stream=True)) as response:
        assert response.status_code == 200, response.read()
        chunks = response.iter_raw()  # kept: a dropped iterator closes the connection (the very thing tested)
        next(chunks)
        assert base.in_flight == 1
    # 2000 frames would take tens of seconds: being freed at once means the request was cancelled
    assert base.wait_idle(timeout=5.0) < 5.0


def test_a_client_that_gives_up_on_a_whole_file_cancels_it_too(base: Live, http: httpx.Client) -> None:
    with pytest.raises(httpx.ReadTimeout):  # the client closes the connection when it times out
        http.post("/audio/speech", json=clone(max_new_tokens=2000), timeout=httpx.Timeout(30, read=0.5))
    assert base.wait_idle(timeout=5.0) < 5.0


def test_sse_sends_audio_deltas_then_done(base: Live, http: httpx.Client) -> None:
    body = clone(stream_format="sse", response_format="pcm", seed=5)
    response = http.post("/audio/speech", json=body)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    events = [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: ")]
    assert [e["type"] for e in events[:-1]] == ["speech.audio.delta"] * (len(events) - 1)
    assert events[-1]["type"] == "speech.audio.done"
    audio = b"".join(base64.b64decode(e["audio"]) for e in events[:-1])
    assert audio == http.post("/audio/speech", json=clone(response_format="pcm", seed=5)).content


def test_past_the_in_flight_limit_a_request_is_refused_at_once(base: Live, http: httpx.Client) -> None:
    held = []
    try:
        for _ in range(IN_FLIGHT_LIMIT):
            cm = http.stream("POST", "/audio/speech", json=clone(max_new_tokens=2000, stream=True))
            response = cm.__enter__()
            held.append(cm)
            assert response.status_code == 200
        start = time.monotonic()
        refused = http.post("/audio/speech", json=clone())
        assert time.monotonic() - start < 2.0
        assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
        assert refused.json()["error"]["code"] == "busy" and "busy" in refused.json()["error"]["message"]
    finally:
        for cm in held:
            cm.__exit__(None, None, None)
    base.wait_idle()
    assert http.post("/audio/speech", json=clone(max_new_tokens=3)).status_code == 200


# -- the Qwen3-TTS fields -------------------------------------------------------------------------------------------


def test_a_seed_repeats_the_audio_and_flac_holds_the_same_samples(http: httpx.Client) -> None:
    first, again = (http.post("/audio/speech", json=clone(seed=123)) for _ in range(2))
    assert first.status_code == again.status_code == 200
    assert first.content == again.content and first.headers["x-voxtrace-seed"] == "123"
    other = http.post("/audio/speech", json=clone(seed=124))
    assert other.content != first.content
    flac = http.post("/audio/speech", json=clone(seed=123, response_format="flac"))
    assert flac.headers["content-type"] == "audio/flac"
    assert np.array_equal(
        sf.read(io.BytesIO(flac.content), dtype="int16")[0], sf.read(io.BytesIO(first.content), dtype="int16")[0]
    )


def test_temperature_zero_is_greedy_and_needs_no_seed(http: httpx.Client) -> None:
    runs = [http.post("/audio/speech", json=clone(seed=None, temperature=0)) for _ in range(2)]
    assert runs[0].content == runs[1].content and runs[0].headers["x-voxtrace-seed"] == "none"
    sampled = http.post("/audio/speech", json=clone(seed=None, top_k=5, top_p=0.9, repetition_penalty=1.1))
    assert sampled.status_code == 200 and sampled.headers["x-voxtrace-seed"].isdigit()


def test_x_vector_only_cloning_and_a_data_url_clip(http: httpx.Client) -> None:
    xvec = http.post("/audio/speech", json=clone(ref_text=None, x_vector_only_mode=True))
    assert xvec.status_code == 200, xvec.text
    data_url = "data:audio/wav;base64," + REF_B64
    via_url = http.post("/audio/speech", json=clone(ref_audio=data_url))
    assert via_url.status_code == 200 and via_url.content == http.post("/audio/speech", json=clone()).content


def test_a_custom_voice_speaker_with_instructions(custom: Live) -> None:
    with httpx.Client(base_url=custom.url + "/v1", timeout=60) as client:
        entry = client.get("/models").json()["data"][0]
        assert entry["task_type"] == "custom_voice" and "vivian" in entry["speakers"]
        body = {"input": "Hello.", "voice": "Vivian", "instructions": "Warm and slow.", "max_new_tokens": 6, "seed": 1}
        spoken = client.post("/audio/speech", json=body)
        assert spoken.status_code == 200, spoken.text
        as_object = client.post("/audio/speech", json={**body, "voice": {"id": "vivian"}})
        assert as_object.content == spoken.content
        unknown = client.post("/audio/speech", json={**body, "voice": "nobody"})
        assert unknown.status_code == 400 and unknown.json()["error"]["param"] == "voice"
        clip = client.post("/audio/speech", json={**body, "ref_audio": REF_B64})
        assert clip.status_code == 400 and clip.json()["error"]["param"] == "ref_audio"


def test_models_lists_the_loaded_checkpoint(base: Live, http: httpx.Client) -> None:
    listing = http.get("/models").json()
    assert listing["object"] == "list" and len(listing["data"]) == 1
    entry = listing["data"][0]
    assert entry["id"] == "base" and entry["object"] == "model" and entry["root"] == base.engine.checkpoint
    assert entry["task_type"] == "voice_clone" and "english" in entry["languages"] and entry["speakers"] == []
    assert entry["sample_rate"] == 24000 and entry["response_formats"] == ["wav", "pcm", "flac"]


# -- refusals -------------------------------------------------------------------------------------------------------

SILENT = base64.b64encode(wav_bytes(np.zeros(16000, np.float32), 16000)).decode()
TOO_LONG = base64.b64encode(wav_bytes(voice_like_clip(MAX_REF_SECONDS + 1, 8000), 8000)).decode()
REFUSED = {
    "empty input": ({"input": "  "}, 400, "input"),
    "missing input": ({"input": None}, 400, "input"),
    "text over the engine's limit": ({"input": "a" * (MAX_TEXT_CHARS + 1)}, 400, "input"),
    "mp3": ({"response_format": "mp3"}, 400, "response_format"),
    "speed": ({"speed": 1.5}, 400, "speed"),
    "a flac stream": ({"response_format": "flac", "stream": True}, 400, "response_format"),
    "unknown language": ({"language": "Klingon"}, 400, "language"),
    "unknown task": ({"task_type": "karaoke"}, 400, "task_type"),
    "another checkpoint's task": ({"task_type": "CustomVoice"}, 400, "task_type"),
    "unknown model": ({"model": "gpt-4o-mini-tts"}, 404, "model"),
    "unknown field": ({"x_vector_only": True}, 400, "x_vector_only"),
    "bad base64": ({"ref_audio": "UklGR!!!"}, 400, "ref_audio"),
    "not audio": ({"ref_audio": base64.b64encode(b"plain text, no audio").decode()}, 400, "ref_audio"),
    "a file path": ({"ref_audio": "/etc/passwd"}, 400, "ref_audio"),
    "a relative path": ({"ref_audio": "clips/me.wav"}, 400, "ref_audio"),
    "an http URL": ({"ref_audio": "http://127.0.0.1:1/me.wav"}, 400, "ref_audio"),
    "a file URL": ({"ref_audio": "file:///etc/passwd"}, 400, "ref_audio"),
    "a data URL of text": ({"ref_audio": "data:text/plain;base64,aGVsbG8="}, 400, "ref_audio"),
    "a silent clip": ({"ref_audio": SILENT}, 400, "ref_audio"),
    "a clip over the engine's limit": ({"ref_audio": TOO_LONG}, 400, "ref_audio"),
    "no transcript for ICL": ({"ref_text": None}, 400, "ref_text"),
    "max_new_tokens 0": ({"max_new_tokens": 0}, 400, "max_new_tokens"),
    "top_p over 1": ({"top_p": 1.5}, 400, "top_p"),
    "a negative seed": ({"seed": -1}, 400, "seed"),
}


@pytest.mark.parametrize("case", REFUSED, ids=list(REFUSED))
def test_a_bad_request_names_its_field(case: str, http: httpx.Client) -> None:
    fields, status, param = REFUSED[case]
    body = {k: v for k, v in clone(**fields).items() if v is not None}
    response = http.post("/audio/speech", json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert error["message"].startswith(param)


def test_a_body_that_is_not_json_is_refused(http: httpx.Client) -> None:
    response = http.post("/audio/speech", content=b'{"input": ', headers={"content-type": "application/json"})
    assert response.status_code == 400 and "JSON" in response.json()["error"]["message"]


def test_a_body_over_the_limit_is_refused_before_parsing(base: Live, http: httpx.Client) -> None:
    big = b"x" * (2 * BODY_LIMIT)  # not even JSON: it is never parsed
    declared = http.post("/audio/speech", content=big, headers={"content-type": "application/json"})
    assert declared.status_code == 413 and declared.json()["error"]["code"] == "request_too_large"

    def chunked() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        for _ in range(32):
            yield b"x" * (BODY_LIMIT // 8)

    streamed = http.post("/audio/speech", content=chunked(), headers={"content-type": "application/json"})
    assert streamed.status_code == 413 and "limit" in streamed.json()["error"]["message"]
    assert base.in_flight == 0


def test_an_unknown_route_answers_in_the_error_shape(http: httpx.Client) -> None:
    response = http.get("/audio/voices")
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"


def test_the_server_binds_to_loopback_unless_told() -> None:
    assert inspect.signature(serve).parameters["host"].default == "127.0.0.1"


if __name__ == "__main__":
    raise SystemExit(pytest.main([__file__, "-q"]))
