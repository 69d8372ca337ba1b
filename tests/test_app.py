"""`app.py` as a user runs it: `synth` synthesises one request from the command line with the embedded tiny model on a
fresh machine; without it, the app and the API are served on one port."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import soundfile as sf

from tests.app_process import ROOT, AppProcess


def test_app_writes_a_wav_with_the_embedded_tiny_model(tmp_path: Path) -> None:
    out = tmp_path / "hello.wav"
    proc = subprocess.run(
        [
            sys.executable,
            "app.py",
            "synth",
            "--text",
            "Hello from Voxtrace.",
            "--max-new-tokens",
            "13",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "RANDOM weights" in proc.stderr  # the tiny model says plainly that its audio is noise
    audio, rate = sf.read(out)
    assert rate == 24000 and sf.info(out).subtype == "PCM_16"  # what a user downloads: 16-bit unless asked
    assert len(audio) == 12 * 1920  # 13 draws -> 12 frames of 80 ms
    assert audio.std() > 0.01


def test_app_clones_a_voice_from_a_clip(tmp_path: Path, clips: dict[str, Path], checkpoints: dict[str, Path]) -> None:
    out = tmp_path / "clone.wav"
    args = [
        "--model",
        str(checkpoints["base"]),
        "--ref-audio",
        str(clips["stereo"]),
        "--ref-text",
        "Reference.",
        "--text",
        "Cloned.",
        "--max-new-tokens",
        "5",
        "--seed",
        "3",
        "--out",
        str(out),
        "--float",
    ]
    proc = subprocess.run(
        [sys.executable, "app.py", "synth", *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    assert sf.info(out).frames > 0 and sf.info(out).subtype == "FLOAT"


def test_app_serves_the_page_the_api_and_health_on_one_port_for_the_hosts_it_is_told() -> None:
    args = ("--port", "0", "--allowed-hosts", "127.0.0.1,tts.example")
    with AppProcess(*args) as app:
        url = app.serving_url()
        assert url.startswith("http://127.0.0.1:")  # loopback unless told otherwise
        assert "Answering requests for Host 127.0.0.1, tts.example (any port)" in app.stderr
        assert "Remote servers for Compare and Benchmark: off (--remote-servers)" in app.stderr  # no SSRF by default
        assert "memory plan (cpu, float32)" in app.stderr  # the talker's KV cache and what each process holds
        assert httpx.get(url + "/ready", timeout=5).json()["status"] == "ready"
        page = httpx.get(url + "/", timeout=5)
        assert page.status_code == 200 and "Voxtrace" in page.text
        config = httpx.get(url + "/config", timeout=5).text
        assert "random weights" in config  # the page says plainly that the tiny model's audio is noise
        models = httpx.get(url + "/v1/models", timeout=5)  # the HTTP API, same port
        assert models.status_code == 200, models.text
        assert httpx.get(url + "/health", headers={"host": "tts.example:443"}, timeout=5).status_code == 200
        assert httpx.get(url + "/health", headers={"host": "localhost"}, timeout=5).status_code == 400
    assert "RANDOM weights" in app.stderr


def test_a_host_beyond_loopback_must_say_which_names_it_answers() -> None:
    with AppProcess("--host", "0.0.0.0", "--port", "0") as app:
        assert app.wait_exit(60) != 0
    assert "--allowed-hosts" in app.stderr and "Starting the engine" not in app.stderr  # refused before any work


def test_a_talker_shape_that_does_not_fit_in_memory_is_refused_at_start_with_the_numbers(tmp_path: Path) -> None:
    config = tmp_path / "tight.yaml"
    config.write_text("talker:\n  max_num_seqs: 8\n  max_model_len: 4096\nmemory:\n  kv_cache_gb: 0.01\n")
    with AppProcess("--config", str(config), "--port", "0") as app:
        assert app.wait_exit(120) != 0
    assert "talker.max_num_seqs 8 x talker.max_model_len 4096 need a" in app.stderr
    assert "memory.kv_cache_gb 0.01" in app.stderr and "Traceback" not in app.stderr
