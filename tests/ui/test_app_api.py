"""The app's HTTP API on the embedded tiny model: all three tasks are served at once, each by its own engine, so a
client picks one with task_type and nothing is started or switched."""

from __future__ import annotations

import httpx

from tests.ui.conftest import RunningApp


def test_every_task_of_the_tiny_model_is_served_by_its_own_engine(running_app: RunningApp) -> None:
    models = httpx.get(running_app.url + "/v1/models", timeout=30).json()["data"]
    assert [m["id"] for m in models] == ["tiny-base", "tiny-custom_voice", "tiny-voice_design"]
    speaker = models[1]["speakers"][0]
    bodies = {
        "custom_voice": {"voice": speaker},
        "voice_design": {"instructions": "A calm voice."},
    }
    for task, extra in bodies.items():  # the base checkpoint would refuse either task: a 200 is its own engine's
        answer = httpx.post(
            running_app.url + "/v1/audio/speech",
            json={"input": "Hi.", "task_type": task, "max_new_tokens": 4, "response_format": "pcm", **extra},
            timeout=60,
        )
        assert answer.status_code == 200, answer.text
        assert len(answer.content) == 3 * 1920 * 2  # 4 draws -> 3 frames, s16le


def test_ready_covers_every_tasks_engine(running_app: RunningApp) -> None:
    ready = httpx.get(running_app.url + "/ready", timeout=30)
    assert ready.status_code == 200 and ready.json()["stages"] == {
        "talker": True,
        "code2wav": True,
        "tiny-custom_voice/talker": True,
        "tiny-custom_voice/code2wav": True,
        "tiny-voice_design/talker": True,
        "tiny-voice_design/code2wav": True,
    }
