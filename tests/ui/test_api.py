"""The OpenAI-compatible speech API against a real server: the production stack (the edge, uvicorn) on 127.0.0.1
serving a real engine on the tiny checkpoints, called with the `openai` client and with raw HTTP."""

from __future__ import annotations

import base64
import io
import json
import logging
import time
from collections.abc import Iterator
from http.client import HTTPConnection
from typing import Any

import httpx
import numpy as np
import openai
import pytest
import soundfile as sf

from engine import Engine, EngineConfig
from engine.config import LimitsConfig
from tests.conftest import voice_like_clip
from tests.ui.live_server import Live, serving
from ui.server import ApiLimits, EdgeLimits, ServeConfig, create_server

REF_TEXT = "This is the reference clip."
SAMPLES_PER_FRAME = 1920  # 80 ms at 24 kHz
BODY_LIMIT = 1 << 20
IN_FLIGHT_LIMIT = 2
MAX_REF_SECONDS = 5.0
MAX_TEXT_CHARS = 300
MAX_INSTRUCT_CHARS = 100
MAX_REF_TEXT_CHARS = 200
MAX_NEW_TOKENS = 3000


# Engines are module-scoped because each start costs seconds; the limits are small so the tests can reach them.
@pytest.fixture(scope="module")
def base(checkpoints) -> Iterator[Live]:
    limits = LimitsConfig(
        max_ref_seconds=MAX_REF_SECONDS,
        max_text_chars=MAX_TEXT_CHARS,
        max_instruct_chars=MAX_INSTRUCT_CHARS,
        max_ref_text_chars=MAX_REF_TEXT_CHARS,
        max_new_tokens=MAX_NEW_TOKENS,
    )
    with Engine(EngineConfig(model=str(checkpoints["base"]), limits=limits)) as engine:
        app = create_server(engine, ApiLimits(max_in_flight=IN_FLIGHT_LIMIT))
        with serving(app, EdgeLimits(api_body_bytes=BODY_LIMIT)) as live:
            yield live


@pytest.fixture(scope="module")
def custom(checkpoints) -> Iterator[Live]:
    with Engine(EngineConfig(model=str(checkpoints["custom_voice"]))) as engine, serving(create_server(engine)) as live:
        yield live


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
    audio = client.audio.speech.create(  # the client needs a voice; voice_clone takes its voice from ref_audio
        model=model, voice="", input="Hello from the OpenAI client.", response_format="wav", extra_body=extra
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
        model="base", voice="", input="Streaming from the OpenAI client.", response_format="pcm", extra_body=extra
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
        assert response.headers["x-voxtrace-request-id"] in base.engine.router.requests_in("talker")
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


def test_models_lists_the_loaded_checkpoint_by_name_never_by_path(base: Live, http: httpx.Client) -> None:
    response = http.get("/models")
    listing = response.json()
    assert listing["object"] == "list" and len(listing["data"]) == 1
    entry = listing["data"][0]
    assert entry["id"] == entry["root"] == "base" and entry["object"] == "model"
    assert str(base.engine.checkpoint) not in response.text and "/" not in json.dumps(entry)
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
    # JSON's \ud800 escape decodes to a lone surrogate, which no tokenizer (nor UTF-8) takes
    "a lone surrogate in input": ({"input": "Hello \ud800"}, 400, "input"),
    "a lone surrogate in ref_text": ({"ref_text": "\udfff"}, 400, "ref_text"),
    "a lone surrogate in language": ({"language": "\ud800"}, 400, "language"),
    "ref_text over the engine's limit": ({"ref_text": "a" * 500_000}, 400, "ref_text"),
    "instructions over the engine's limit": ({"instructions": "a" * (MAX_INSTRUCT_CHARS + 1)}, 400, "instructions"),
    # strict types: a bool is not a number, a float not a whole number, a number not a bool
    "seed true": ({"seed": True}, 400, "seed"),
    "a fractional-looking seed": ({"seed": 7.0}, 400, "seed"),
    "max_new_tokens 1e9": ({"max_new_tokens": 1e9}, 400, "max_new_tokens"),
    "max_new_tokens over the engine's limit": ({"max_new_tokens": 10**9}, 400, "max_new_tokens"),
    "stream as text": ({"stream": "yes"}, 400, "stream"),
    "x_vector_only_mode as 1": ({"x_vector_only_mode": 1}, 400, "x_vector_only_mode"),
    # finite and in range
    "temperature 1e308": ({"temperature": 1e308}, 400, "temperature"),
    "temperature Infinity": ({"temperature": float("inf")}, 400, "temperature"),
    "temperature NaN": ({"temperature": float("nan")}, 400, "temperature"),
    "temperature near 0 but not greedy": ({"temperature": 1e-4}, 400, "temperature"),
    "repetition_penalty 1e-300": ({"repetition_penalty": 1e-300}, 400, "repetition_penalty"),
    "top_k past any vocabulary": ({"top_k": 10**12}, 400, "top_k"),
    # voice_clone takes its voice from the clip: a voice name is not silently dropped
    "a voice name for voice_clone": ({"voice": "alloy"}, 400, "voice"),
    "a voice object for voice_clone": ({"voice": {"id": "alloy"}}, 400, "voice"),
}


def post_json(client: httpx.Client, body: dict[str, Any]) -> httpx.Response:
    """The body as Python's json writes it: lone surrogates as \\u escapes, Infinity and NaN as JavaScript's."""
    return client.post("/audio/speech", content=json.dumps(body), headers={"content-type": "application/json"})


@pytest.mark.parametrize("case", REFUSED, ids=list(REFUSED))
def test_a_bad_request_names_its_field(case: str, http: httpx.Client) -> None:
    fields, status, param = REFUSED[case]
    body = {k: v for k, v in clone(**fields).items() if v is not None}
    response = post_json(http, body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert error["message"].startswith(param) and len(error["message"]) < 300
    assert response.headers["x-voxtrace-request-id"]


def test_a_limit_is_named_when_a_request_is_past_it(http: httpx.Client) -> None:
    error = post_json(http, clone(max_new_tokens=MAX_NEW_TOKENS + 1)).json()["error"]
    assert error["param"] == "max_new_tokens" and str(MAX_NEW_TOKENS) in error["message"]
    error = post_json(http, clone(ref_text="a" * (MAX_REF_TEXT_CHARS + 1))).json()["error"]
    assert error["param"] == "ref_text" and str(MAX_REF_TEXT_CHARS) in error["message"]


def test_a_lone_surrogate_leaves_the_connection_serving(base: Live) -> None:
    """One keep-alive connection: the refusal is an answer, not a dropped connection."""
    conn = HTTPConnection("127.0.0.1", base.port, timeout=60)
    try:
        body = json.dumps(clone(input="\ud800"))
        conn.request("POST", "/v1/audio/speech", body, {"content-type": "application/json"})
        refused = conn.getresponse()
        assert refused.status == 400 and json.loads(refused.read())["error"]["param"] == "input"
        conn.request("GET", "/v1/models")
        assert conn.getresponse().status == 200
    finally:
        conn.close()


def test_a_refused_request_leaves_one_log_line_with_its_id(
    http: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="voxtrace"):
        response = http.post("/audio/speech", json=clone(language="Klingon"))
    assert response.status_code == 400
    rid = response.headers["x-voxtrace-request-id"]
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and rid in lines[0] and "400" in lines[0] and "language" in lines[0]
    assert not any(r.exc_info for r in caplog.records)


def test_a_bug_of_ours_is_a_bare_500_with_one_traceback_in_the_log(
    base: Live, http: httpx.Client, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*args: object) -> bytes:
        raise RuntimeError("/srv/voxtrace/secret.py went wrong")

    monkeypatch.setattr("ui.api.encode", broken)
    with caplog.at_level(logging.INFO):
        response = http.post("/audio/speech", json=clone(max_new_tokens=3))
    assert response.status_code == 500
    assert response.json() == {
        "error": {"message": "internal error", "type": "server_error", "param": None, "code": "internal_error"}
    }
    rid = response.headers["x-voxtrace-request-id"]
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert len(tracebacks) == 1 and rid in tracebacks[0].getMessage()
    assert [r.getMessage() for r in caplog.records if r.name.startswith("uvicorn")] == []


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


def test_the_server_binds_to_loopback_and_answers_loopback_names_unless_told() -> None:
    assert ServeConfig().host == "127.0.0.1"
    assert ServeConfig().edge.allowed_hosts == ("127.0.0.1", "localhost", "[::1]")


if __name__ == "__main__":
    raise SystemExit(pytest.main([__file__, "-q"]))
