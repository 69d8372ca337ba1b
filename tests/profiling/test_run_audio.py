"""The audio a run folder holds (what the app offers to download): 16-bit PCM WAV unless float is asked for."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from engine import Engine, EngineConfig, SpeechRequest
from engine.config import StageConfig
from engine.model.sampling import SamplingParams
from profiling.run import profile_run

GREEDY = SamplingParams(do_sample=False, subtalker_dosample=False)


@pytest.fixture(scope="module")
def engine(checkpoints) -> Engine:
    uni = StageConfig(executor="uni", max_num_seqs=2)
    with Engine(EngineConfig(model=str(checkpoints["custom_voice"]), talker=uni, code2wav=uni)) as e:
        yield e


def run_wav(engine: Engine, run_dir: Path, **options) -> Path:
    request = SpeechRequest("Hello.", speaker=engine.info.speakers[0], sampling=GREEDY, max_new_tokens=6)
    result = profile_run(engine, [request], run_dir=run_dir, **options)
    assert not result.errors
    return run_dir / "audio" / f"{request.request_id}.wav"


def test_a_runs_wav_is_16_bit_pcm_by_default_and_float_when_asked(engine: Engine, tmp_path: Path) -> None:
    pcm = run_wav(engine, tmp_path / "pcm")
    assert sf.info(pcm).subtype == "PCM_16"
    floats = run_wav(engine, tmp_path / "float", wav_subtype="FLOAT")
    assert sf.info(floats).subtype == "FLOAT"
    a, b = sf.read(pcm, dtype="float32")[0], sf.read(floats, dtype="float32")[0]
    assert len(a) == len(b) > 0 and np.abs(a - np.clip(b, -1, 1)).max() <= 2 / 32767  # the same audio, rounded


def test_an_unknown_wav_subtype_is_refused_before_the_run(engine: Engine, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="wav_subtype 'PCM_8'"):
        run_wav(engine, tmp_path, wav_subtype="PCM_8")
    assert not tmp_path.joinpath("audio").exists()


if __name__ == "__main__":
    raise SystemExit(pytest.main([__file__, "-q"]))
