"""The app's handlers driven through gradio_client against a running app, as a script would use them."""

from __future__ import annotations

import base64
import dataclasses
import json
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf
import torch
from gradio.utils import get_upload_folder
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from tests.ui.conftest import RunningApp
from ui.uploads import NOT_UPLOADED
from ui.views.synthesize import SynthesisForm

# the Synthesize form's fields in order (gradio_client names them param_0, param_1, ...), with the page's defaults
SYNTH_FIELDS = {
    "task": "voice_clone", "text": "Hello.", "language": "auto", "ref_audio": None, "ref_text": "",
    "x_vector_only": False, "saved_voice": "(upload or record a clip)", "speaker": None, "instruct": "",
    "do_sample": True, "temperature": 0.9, "top_k": 50, "top_p": 1.0, "max_new_tokens": 20, "seed": -1,
    "talker_executor": "uni", "code2wav_executor": "uni", "max_num_seqs": 8, "first_chunk_frames": 2,
    "chunk_frames": 8, "torch_capture": False, "float_wav": False,
}  # fmt: skip


def test_a_script_sends_the_synthesis_form_in_its_field_order() -> None:
    assert list(SYNTH_FIELDS) == [f.name for f in dataclasses.fields(SynthesisForm)]


@pytest.fixture(scope="module")
def client(running_app: RunningApp) -> Client:
    return Client(running_app.url + "/", verbose=False)


def synthesize(client: Client, **fields: Any) -> dict[str, Any]:
    """One Generate click; the outputs by name."""
    unknown = set(fields) - set(SYNTH_FIELDS)
    assert not unknown, unknown
    out = client.predict(*{**SYNTH_FIELDS, **fields}.values(), "", api_name="/synthesize")  # "": no player ran it
    names = ["status", "cards", "seed", "timeline", "utilization", "overhead", "files", "engines"]
    return dict(zip(names, out, strict=True))


def call(url: str, api_name: str, *inputs: Any) -> tuple[str, Any]:
    """One event through Gradio's HTTP API as any script could send it (no upload step): the last SSE event's name
    ("complete" or "error") and its data."""
    posted = httpx.post(f"{url}/gradio_api/call/{api_name}", json={"data": list(inputs)}, timeout=30)
    posted.raise_for_status()
    name, data = None, None
    with httpx.stream("GET", f"{url}/gradio_api/call/{api_name}/{posted.json()['event_id']}", timeout=300) as answer:
        for line in answer.iter_lines():
            if line.startswith("event:"):
                name = line.removeprefix("event:").strip()
            elif line.startswith("data:"):
                data = json.loads(line.removeprefix("data:"))
    return name, data


def server_file(path: Path) -> dict[str, Any]:
    """A file input that names a path on the server instead of an upload."""
    return {"path": str(path), "meta": {"_type": "gradio.FileData"}}


def wav_of(files: list[str]) -> np.ndarray:
    (path,) = [f for f in files if f.endswith(".wav")]
    audio, rate = sf.read(path)
    assert rate == 24000
    return audio


def test_a_custom_voice_with_a_speaker(client: Client, running_app: RunningApp) -> None:
    guide, speakers, instruct, _languages = client.predict("custom_voice", api_name="/set_task")  # (and the voice box)
    assert "Pick a speaker" in guide and speakers["visible"] and instruct["visible"]  # the task's own fields
    engines = running_app.state.engines
    assert speakers["value"] in engines.serving_for("custom_voice").info.speakers  # served at once: no lab engine
    out = synthesize(client, task="custom_voice", text="Hi.", speaker=speakers["value"], max_new_tokens=10, seed=3)
    assert out["seed"] == 3 and "serving engine (tiny-custom_voice" in out["status"]
    assert len(wav_of(out["files"])) == 9 * 1920  # 10 draws -> 9 frames of 80 ms
    assert "time to first audio" in out["cards"] and "× real-time" in out["cards"]
    assert "tasks: voice_clone, custom_voice, voice_design" in out["engines"]


def test_a_voice_clone_from_an_uploaded_clip_streams_and_can_be_repeated(
    client: Client, running_app: RunningApp, clips: dict[str, Path]
) -> None:
    clip = handle_file(str(clips["stereo"]))
    first = synthesize(
        client, task="voice_clone", text="Cloned.", ref_audio=clip, ref_text="Reference.", max_new_tokens=12, seed=-1
    )
    seed = first["seed"]
    assert isinstance(seed, int) and seed >= 0  # the engine picked one and the page shows it
    audio = wav_of(first["files"])
    assert len(audio) > 0 and audio.std() > 0.01
    # the seed shown repeats the run
    again = synthesize(client, task="voice_clone", text="Cloned.", ref_audio=clip, ref_text="Reference.",
                       max_new_tokens=12, seed=seed)  # fmt: skip
    np.testing.assert_array_equal(wav_of(again["files"]), audio)
    trace = json.loads(Path(next(f for f in first["files"] if f.endswith("trace.json"))).read_text())
    assert any(e.get("name") == "decode_step" for e in trace["traceEvents"])


def test_an_uploaded_clip_is_encoded_before_generate(
    client: Client, running_app: RunningApp, clips: dict[str, Path], tmp_path: Path
) -> None:
    samples, rate = sf.read(clips["mono"])
    fresh = tmp_path / "quieter.wav"  # a clip no other test has cloned
    sf.write(fresh, samples * 0.5, rate)
    client.predict("voice_clone", api_name="/set_task")
    status = client.predict("voice_clone", handle_file(str(fresh)), api_name="/prepare_voice")  # on upload
    assert status.startswith("Clip ready: encoded in")
    voices = running_app.state.engines.serving.prep.voices
    hits, misses = voices.hits, voices.misses
    synthesize(client, text="Ready.", ref_audio=handle_file(str(fresh)), ref_text="Reference.", max_new_tokens=4)
    assert (voices.hits, voices.misses) == (hits + 1, misses)  # Generate found the voice encoded


def test_an_unreadable_upload_is_refused_at_once(client: Client, tmp_path: Path) -> None:
    bad = tmp_path / "notes.wav"
    bad.write_bytes(b"not audio at all")
    client.predict("voice_clone", api_name="/set_task")
    status = client.predict("voice_clone", handle_file(str(bad)), api_name="/prepare_voice")
    assert status.startswith("This clip cannot be used: ref_audio")


def test_a_bad_request_names_its_field(client: Client, clips: dict[str, Path]) -> None:
    clip = handle_file(str(clips["mono"]))
    with pytest.raises(AppError, match="ref_text"):  # ICL cloning needs the clip's transcript
        synthesize(client, task="voice_clone", text="No transcript.", ref_audio=clip, ref_text="")


def test_a_saved_voice_is_picked_again_by_any_visitor(
    client: Client, running_app: RunningApp, clips: dict[str, Path]
) -> None:
    saved = client.predict("me", handle_file(str(clips["mono"])), "", True, api_name="/save_voice")
    assert saved["value"] == "me"
    other = Client(running_app.url + "/", verbose=False)  # another visitor: the library belongs to the server
    out = synthesize(other, task="voice_clone", text="Again.", saved_voice="me", max_new_tokens=6, seed=1)
    assert len(wav_of(out["files"])) == 5 * 1920
    with pytest.raises(AppError, match="already saved"):  # names are unique; nothing is replaced
        other.predict("me", handle_file(str(clips["stereo"])), "", True, api_name="/save_voice")
    with pytest.raises(AppError, match="A voice name is"):  # a name is never a path
        client.predict("../me", handle_file(str(clips["mono"])), "", True, api_name="/save_voice")
    # on disk under the app's data folder (so it outlives the app), in files named by the library
    files = sorted(p.suffix for p in running_app.state.voices.folder.iterdir())
    assert files == [".clip", ".json"]
    deleted = other.predict("me", api_name="/delete_voice")
    assert "me" not in [value for _, value in deleted["choices"]]
    assert not any(running_app.state.voices.folder.iterdir())


def test_a_comparison_of_uni_against_mp(client: Client) -> None:
    verdict, table, _plot, files = client.predict(
        "current · uni-uni", "current · mp-mp", "Compare me.", 2, 2, 8, 0, None, "", "", api_name="/compare"
    )
    assert "faster than" in verdict
    rows = {r[0]: r[1:] for r in table["data"]}
    a, b, diff, _ = rows["wall time (s)"]
    assert a > 0 and b > 0 and diff == pytest.approx(b - a, abs=1e-3)
    cpu_a, cpu_b, _, _ = rows["CPU % (engine processes, 100 = a core)"]
    assert cpu_a > 0 and cpu_b > 0  # mp: the engine's process and both workers, together
    assert ("GPU busy % (NVML)" in rows) == torch.cuda.is_available()
    assert sum(f.endswith("trace.json") for f in files) == 2


def test_a_small_benchmark(client: Client) -> None:
    plot, table, files = client.predict(["current · uni-uni"], "1,2", 2, "Bench.", 6, "", api_name="/benchmark")
    assert [row[1] for row in table["data"]] == [1, 2]  # one row per concurrency level
    assert all(row[2] == 2 for row in table["data"])  # requests measured per level
    assert sorted(Path(f).name for f in files) == ["bench.csv", "bench.html", "bench.json"]
    row = dict(zip(table["headers"], table["data"][0], strict=True))
    assert row["continuity_c200"] == 1.0 and len(repr(row["wall_s"])) <= 7  # C200, and rounded to 3 digits
    axis = json.loads(plot["plot"])["layout"]["xaxis"]
    assert axis["tickvals"] == [1, 2] and axis["ticktext"] == ["1", "2"]  # whole concurrency levels only


def test_a_benchmark_of_a_server_by_url(client: Client, running_app: RunningApp) -> None:
    """Our own HTTP API as the remote server: the same client-side figures as for a config."""
    _plot, table, files = client.predict([], "1", 2, "Remote.", 6, running_app.url, api_name="/benchmark")
    (row,) = table["data"]
    assert row[0] == running_app.url and row[2] == 2 and row[3] == 0  # two requests, no error
    assert any(f.endswith("bench.json") for f in files)
    with pytest.raises(AppError, match="server URL"):
        client.predict([], "1", 1, "Remote.", 6, "file:///etc/passwd", api_name="/benchmark")


def test_the_runs_of_this_session_open_again(client: Client) -> None:
    table, picker = client.predict(api_name="/list_runs")
    kinds = [row[1] for row in table["data"]]
    assert {"synthesize", "compare", "benchmark"} <= set(kinds)
    first_synth = next(row[0] for row in table["data"] if row[1] == "synthesize")
    cards, _timeline, _util, _overhead, files = client.predict(first_synth, api_name="/open_run")
    assert "time to first audio" in cards
    assert any(f.endswith("trace.json") for f in files)
    sweep = next(row[0] for row in table["data"] if row[1] == "benchmark")
    _, chart, util, overhead, _ = client.predict(sweep, api_name="/open_run")
    assert chart["value"] is not None and util["value"] is None and overhead["value"] is None  # its own chart only
    comparison = next(row[0] for row in table["data"] if row[1] == "compare")
    _, timelines, util, overhead, _ = client.predict(comparison, api_name="/open_run")
    assert timelines["value"] is not None and util["value"] is None and overhead["value"] is None


# -- what a page may not do ------------------------------------------------------------------------------------------


def test_a_file_on_the_server_is_never_read_through_the_page_api(running_app: RunningApp, tmp_path: Path) -> None:
    """Every handler that takes a clip, called with a server path instead of an upload: one refusal, the same whether
    or not the path exists, and the file is not touched (Gradio would have copied it into its cache)."""
    outside = tmp_path / f"outside-{uuid.uuid4().hex}.wav"  # a readable wav, never uploaded
    sf.write(outside, np.zeros(24000, np.float32), 24000)
    missing = tmp_path / "missing.wav"
    handlers = {
        "prepare_voice": lambda clip: ["voice_clone", clip],
        "save_voice": lambda clip: ["stolen", clip, "", True],
        "synthesize": lambda clip: [*{**SYNTH_FIELDS, "ref_audio": clip}.values(), ""],
        "compare": lambda clip: ["current · uni-uni", "current · uni-uni", "Hi.", 1, 1, 4, 0, clip, "", ""],
    }
    for api_name, inputs in handlers.items():
        answers = [call(running_app.url, api_name, *inputs(server_file(path))) for path in (outside, missing)]
        assert answers[0] == answers[1], api_name
        event, data = answers[0]
        assert (event, data["error"]) == ("error", NOT_UPLOADED), api_name
    assert not list(Path(get_upload_folder()).rglob(outside.name))  # Gradio did not copy it either
    assert "stolen" not in running_app.state.voices.names()


def test_a_page_with_other_settings_never_touches_the_serving_engine(
    client: Client, running_app: RunningApp, clips: dict[str, Path]
) -> None:
    """A Generate with another executor runs on a lab engine while HTTP API streams run on the serving engine: every
    stream ends whole, and the serving engine is the one the server started with."""
    engines = running_app.state.engines
    serving = engines.serving
    clip = base64.b64encode(clips["mono"].read_bytes()).decode()
    frames = 60
    body = {"input": "A long answer that keeps streaming.", "ref_audio": clip, "x_vector_only_mode": True,
            "response_format": "pcm", "stream": True, "max_new_tokens": frames + 1, "temperature": 0}  # fmt: skip
    started = [threading.Event() for _ in range(3)]
    voice = handle_file(str(clips["mono"]))

    def stream(first_bytes: threading.Event) -> bytes:
        data = b""
        try:
            with httpx.stream("POST", running_app.url + "/v1/audio/speech", json=body, timeout=300) as response:
                response.raise_for_status()
                for piece in response.iter_bytes():  # a stream cut by the server raises here
                    data += piece
                    first_bytes.set()
        finally:
            first_bytes.set()  # a failed request wakes the test too, which then reports why
        return data

    with ThreadPoolExecutor(len(started)) as pool:
        streams = [pool.submit(stream, event) for event in started]
        for event, future in zip(started, streams, strict=True):
            assert event.wait(120), "an API stream did not start"
            if future.done():
                future.result()  # raises if it failed
        page = synthesize(client, talker_executor="mp", text="Lab.", ref_audio=voice, x_vector_only=True,
                          max_new_tokens=4, seed=2)  # fmt: skip
        pcm = [future.result(timeout=300) for future in streams]
    assert "on the lab engine (tiny-base · talker mp · code2wav uni" in page["status"]
    assert [len(p) for p in pcm] == [frames * 1920 * 2] * len(pcm)  # s16le: every frame of every stream arrived
    assert engines.serving is serving and all(serving.ready().values())
    assert engines.lab.config.talker.executor == "mp"
    again = synthesize(client, text="Serving.", ref_audio=voice, x_vector_only=True, max_new_tokens=4, seed=2)
    assert "on the serving engine (tiny-base · talker uni · code2wav uni" in again["status"]
