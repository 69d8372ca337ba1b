"""What the app holds between clicks, one object per responsibility: the engines (`ui.engines`: the serving engine
and the lab engine), the runs of this session (`ui.run_store`), the saved voices (`ui.voices`), the runs the page's
player started (`ui.live`) and the remote servers a page may name (`ui.remotes`). `AppState` composes them; app.py
builds it and closes it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from engine import EngineConfig
from ui.engines import Engines
from ui.lab import LabLimits
from ui.live import LiveRuns
from ui.remotes import RemoteServers
from ui.run_store import RunStore
from ui.voices import VoiceLibrary, VoiceLimits

DATA_DIR_ENV = "VOXTRACE_DATA_DIR"


def default_data_dir() -> Path:
    """Where the app keeps what outlives it (saved voices): $VOXTRACE_DATA_DIR, else $XDG_DATA_HOME/voxtrace, else
    ~/.local/share/voxtrace."""
    if os.environ.get(DATA_DIR_ENV):
        return Path(os.environ[DATA_DIR_ENV]).expanduser()
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "voxtrace"


@dataclass
class AppState:
    """The app's state; `close()` ends the engines and removes the session's run folders."""

    engines: Engines
    runs: RunStore
    voices: VoiceLibrary
    live: LiveRuns  # the page's Generate runs, started over HTTP by its player (`ui.live`)
    remotes: RemoteServers  # the remote speech servers a page may name (`ui.remotes`)

    @classmethod
    def start(
        cls,
        config: EngineConfig,
        runs_dir: Path | None = None,
        data_dir: Path | None = None,
        voice_limits: VoiceLimits | None = None,
        lab_limits: LabLimits | None = None,
        remotes: RemoteServers | None = None,
    ) -> AppState:
        """The serving engine built now (start-up fails early on a bad checkpoint), the rest beside it."""
        voices = VoiceLibrary((data_dir or default_data_dir()) / "voices", voice_limits)
        return cls(Engines(config, lab_limits), RunStore(runs_dir), voices, LiveRuns(), remotes or RemoteServers())

    def close(self) -> None:
        """Close the engines (bounded by `Engine.close`), then remove the run folders; again: nothing."""
        self.engines.close()
        self.runs.close()
