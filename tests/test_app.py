"""`app.py synth` synthesises one request from the command line with the embedded tiny model on a fresh machine."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]


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
    assert rate == 24000
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
    ]
    proc = subprocess.run(
        [sys.executable, "app.py", "synth", *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    assert sf.info(out).frames > 0


def test_app_serves_the_page_and_the_api_on_one_loopback_port() -> None:
    import socket
    import time

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "app.py", "--port", str(port)], cwd=ROOT, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stderr.read()
            try:
                page = httpx.get(f"http://127.0.0.1:{port}/", timeout=5)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the app did not come up"
                time.sleep(0.3)
        assert page.status_code == 200 and "Voxtrace" in page.text
        config = httpx.get(f"http://127.0.0.1:{port}/config", timeout=5).text
        assert "random weights" in config  # the page says plainly that the tiny model's audio is noise
        models = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=5)  # the HTTP API, same port
        assert models.status_code == 200, models.text
    finally:
        proc.terminate()
        proc.wait(30)
    assert "RANDOM weights" in proc.stderr.read()
