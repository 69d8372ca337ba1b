"""The runs of this session (Synthesize, Compare, Benchmark, Tune), each with its folder of files, shown in the Runs
view and opened again from there. Kept in memory: a restarted app starts with none."""

from __future__ import annotations

import itertools
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import plotly.graph_objects as go

from ui.profiled import ProfiledRun


@dataclass
class RunRecord:
    """A run of this session, as the Runs view lists it and opens it again."""

    id: str
    kind: str  # synthesize, compare, benchmark, tune
    title: str
    config: str  # a short description of the engine config(s)
    created: float
    profiled: list[ProfiledRun] = field(default_factory=list)  # one per config; none for a sweep (its files say it)
    files: list[str] = field(default_factory=list)  # downloads (paths)
    summary: dict[str, Any] = field(default_factory=dict)  # the row in the runs table
    figure: go.Figure | None = None  # a benchmark's or a tune's chart, drawn again when the run is opened


class RunStore:
    """The session's runs by id, and their folders under `folder` (a temporary one, removed by `close()`, when none
    is given)."""

    def __init__(self, folder: Path | None = None) -> None:
        self._own_folder = folder is None
        self.folder = folder or Path(tempfile.mkdtemp(prefix="voxtrace-runs-"))
        self._records: dict[str, RunRecord] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def new_dir(self, kind: str) -> tuple[str, Path]:
        """A fresh id and folder for a run of `kind`."""
        with self._lock:
            run_id = f"{kind}-{next(self._ids):03d}"
        path = self.folder / run_id
        path.mkdir(parents=True, exist_ok=True)
        return run_id, path

    def add(self, record: RunRecord) -> RunRecord:
        with self._lock:
            self._records[record.id] = record
        return record

    def get(self, run_id: str) -> RunRecord | None:
        with self._lock:
            return self._records.get(run_id)

    def newest_first(self) -> list[RunRecord]:
        with self._lock:
            return list(reversed(self._records.values()))

    def close(self) -> None:
        """Remove the folder when it is the store's own."""
        if self._own_folder:
            shutil.rmtree(self.folder, ignore_errors=True)
