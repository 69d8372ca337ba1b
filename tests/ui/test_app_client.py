"""The app's handlers driven through gradio_client against a running app, as a script would use them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf
import torch
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from tests.ui.conftest import RunningApp

# the Synthesize handler's inputs in order (gradio_client names them param_0, param_1, ...), with the page's defaults
SYNTH_FIELDS = {
    "task": "voice_clone", "text": "Hello.", "language": "auto", "ref_audio": None, "ref_text": "",
    "x_vector_only": False, "saved_voice": "(upload or record a clip)", "speaker": None, "instruct": "",
    "do_sample": True, "temperature": 0.9, "top_k": 50, "top_p": 1.0, "max_new_tokens": 20, "seed": -1,
    "talker_executor": "uni", "code2wav_executor": "uni", "max_num_seqs": 8, "first_chunk_frames": 2,
    "chunk_frames": 8, "torch_capture": False,
}  # fmt: skip


@pytest.fixture(scope="module")
def client(running_app: RunningApp) -> Client:
    return Client(running_app.url + "/", verbose=False)


def synthesize(client: Client, **fields: Any) -> dict[str, Any]:
    """One Generate click; the outputs by name."""
    unknown = set(fields) - set(SYNTH_FIELDS)
    assert not unknown, unknown
    out = client.predict(*{**SYNTH_FIELDS, **fields}.values(), api_name="/synthesize")
    names = ["player", "cards", "seed", "timeline", "utilization", "overhead", "files", "status"]
    return dict(zip(names, out, strict=True))


def wav_of(files: list[str]) -> np.ndarray:
    (path,) = [f for f in files if f.endswith(".wav")]
    audio, rate = sf.read(path)
    assert rate == 24000
    return audio


def test_a_custom_voice_with_a_speaker(client: Client, running_app: RunningApp) -> None:
    speakers, _, _ = client.predict("custom_voice", api_name="/set_task")  # the tiny model is rebuilt for the task
    speaker = speakers["value"]
    assert speaker in running_app.manager.engine.model.speakers
    out = synthesize(client, task="custom_voice", text="Hi.", speaker=speaker, max_new_tokens=10, seed=3)
    assert out["seed"] == 3
    assert len(wav_of(out["files"])) == 9 * 1920  # 10 draws -> 9 frames of 80 ms
    assert "time to first audio" in out["cards"] and "× real-time" in out["cards"]


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
    # the player's stream carries exactly the audio of the run
    stream_url = running_app.url + first["player"]
    pcm = np.frombuffer(httpx.get(stream_url, timeout=30).content, dtype="<f4")
    np.testing.assert_allclose(pcm, audio, atol=1e-4)  # the wav file is float32 too
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
    assert status.startswith("Reference clip ready: encoded in")
    voices = running_app.manager.engine.prep.voices
    hits, misses = voices.hits, voices.misses
    synthesize(client, text="Ready.", ref_audio=handle_file(str(fresh)), ref_text="Reference.", max_new_tokens=4)
    assert (voices.hits, voices.misses) == (hits + 1, misses)  # Generate found the voice encoded


def test_an_unreadable_upload_is_refused_at_once(client: Client, tmp_path: Path) -> None:
    bad = tmp_path / "notes.wav"
    bad.write_bytes(b"not audio at all")
    client.predict("voice_clone", api_name="/set_task")
    status = client.predict("voice_clone", handle_file(str(bad)), api_name="/prepare_voice")
    assert status.startswith("Reference clip refused: ref_audio")


def test_a_bad_request_names_its_field(client: Client, clips: dict[str, Path]) -> None:
    clip = handle_file(str(clips["mono"]))
    with pytest.raises(AppError, match="ref_text"):  # ICL cloning needs the clip's transcript
        synthesize(client, task="voice_clone", text="No transcript.", ref_audio=clip, ref_text="")


def test_a_saved_voice_is_picked_again(client: Client, clips: dict[str, Path]) -> None:
    saved = client.predict("me", handle_file(str(clips["mono"])), "", True, api_name="/save_voice")
    assert saved["value"] == "me"
    out = synthesize(client, task="voice_clone", text="Again.", saved_voice="me", max_new_tokens=6, seed=1)
    assert len(wav_of(out["files"])) == 5 * 1920


def test_a_comparison_of_uni_against_mp(client: Client) -> None:
    verdict, table, _plot, files = client.predict(
        "current · uni-uni", "current · mp-mp", "Compare me.", 2, 2, 8, 0, None, api_name="/compare"
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
    _plot, table, files = client.predict(["current · uni-uni"], "1,2", 2, "Bench.", 6, api_name="/benchmark")
    assert [row[1] for row in table["data"]] == [1, 2]  # one row per concurrency level
    assert all(row[2] == 2 for row in table["data"])  # requests measured per level
    assert sorted(Path(f).name for f in files) == ["bench.csv", "bench.html", "bench.json"]


def test_the_runs_of_this_session_open_again(client: Client) -> None:
    table, picker = client.predict(api_name="/list_runs")
    kinds = [row[1] for row in table["data"]]
    assert {"synthesize", "compare", "benchmark"} <= set(kinds)
    first_synth = next(row[0] for row in table["data"] if row[1] == "synthesize")
    cards, _timeline, _util, _overhead, files = client.predict(first_synth, api_name="/open_run")
    assert "time to first audio" in cards
    assert any(f.endswith("trace.json") for f in files)
