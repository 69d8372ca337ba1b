"""The README's first command: `app.py` synthesises with the embedded tiny model on a fresh machine."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]


def test_app_writes_a_wav_with_the_embedded_tiny_model(tmp_path: Path) -> None:
    out = tmp_path / "hello.wav"
    proc = subprocess.run(
        [sys.executable, "app.py", "--text", "Hello from Voxtrace.", "--max-new-tokens", "13", "--out", str(out)],
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
    proc = subprocess.run([sys.executable, "app.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert sf.info(out).frames > 0
