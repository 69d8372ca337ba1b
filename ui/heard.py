"""What the listener heard: the page's player reports, per run, the time from the click to the first sound, the
underruns it played through and how far ahead of the playhead it was at each chunk. The report comes from a client,
so it is parsed like any input: numbers checked, sizes bounded, the field named when one is wrong."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from profiling.metrics import continuity

MAX_LEAD_POINTS = 4096  # one per chunk: far more than any request's chunks
MAX_MS = 24 * 3600 * 1000.0


@dataclass(frozen=True)
class Heard:
    """The player's figures for one run (milliseconds)."""

    first_sound_ms: float  # the click -> the first sample leaves the player (scheduled start, output latency in)
    chunks: int  # engine chunks received (the stream is framed per chunk)
    underruns: int  # times the player ran dry and restarted
    underrun_total_ms: float
    worst_gap_ms: float
    margin_ms: float  # the lead the player kept before the first sound (learned from earlier runs' arrival gaps)
    lead: tuple[tuple[float, float], ...]  # (ms after the first chunk arrived, ms of audio queued) at each chunk

    @classmethod
    def parse(cls, raw: Any) -> Heard:
        """A player's report (JSON); `ValueError` naming the field for anything else."""
        if not isinstance(raw, dict):
            raise ValueError("heard: must be an object")

        def number(name: str, low: float = 0.0) -> float:
            value = raw.get(name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= MAX_MS:
                raise ValueError(f"heard.{name}: must be a number between {low:g} and {MAX_MS:g}")
            return float(value)

        lead = raw.get("lead")
        if not isinstance(lead, list) or len(lead) > MAX_LEAD_POINTS:
            raise ValueError(f"heard.lead: must be a list of at most {MAX_LEAD_POINTS} [ms, ms] pairs")
        points = []
        for point in lead:
            ok = isinstance(point, list) and len(point) == 2
            if not ok or not all(isinstance(v, (int, float)) and math.isfinite(v) and abs(v) <= MAX_MS for v in point):
                raise ValueError("heard.lead: each point must be a pair of finite numbers (ms)")
            points.append((float(point[0]), float(point[1])))
        return cls(
            number("first_sound_ms"),
            int(number("chunks")),
            int(number("underruns")),
            number("underrun_total_ms"),
            number("worst_gap_ms"),
            number("margin_ms"),
            tuple(points),
        )

    def to_dict(self) -> dict[str, Any]:
        """For the run's metrics.json: the figures, and C50/C100/C200 of what was heard (a multi-chunk request)."""
        shares = continuity([self.worst_gap_ms / 1000] if self.chunks > 1 else [])
        return {**asdict(self), "continuity": asdict(shares)}
