"""What a Tune run leaves behind: the recommended config (`recommended.yaml`, which `app.py --config` takes), every
candidate with its spread (`tune.json`, `tune.csv`), and a self-contained page (`tune.html`: the Pareto chart of
audio-s/s against TTFA p99 with the SLO drawn, the table, the evidence and the verification)."""

from __future__ import annotations

import csv
import html
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import plotly.graph_objects as go

from profiling.evidence import Evidence
from profiling.figures import PALETTE
from profiling.run import no_nan
from profiling.search import OBJECTIVES, Candidate, SearchResult, Slo, Summary, Verification, meets

TABLE = (  # the columns a view shows (rows() also has one column per knob)
    "id",
    "label",
    "requests",
    "repeats",
    "audio_s_per_s",
    "spread",
    "noise",
    "drift",
    "ttfa_p99_s",
    "underrun_p99_s",
    "rtf_p99",
    "errors",
    "meets_slo",
    "notes",
)


@dataclass
class TuneReport:
    workload: str  # its name
    result: SearchResult
    verification: Verification | None
    evidence: list[Evidence]
    config_yaml: str | None  # the recommendation as an engine config (None: no recommendation, or a remote server)
    meta: dict[str, Any] = field(default_factory=dict)
    verify_s: float = 0.0  # the verification's time, after the search's (both count against the budget)

    @property
    def recommended(self) -> Candidate | None:
        """The search's pick when the verification confirmed it (a gain outside the noise), else the default: a
        change that does not beat no change is not worth making."""
        r, v = self.result, self.verification
        confirmed = v is None or (v.gain > 0 and not v.within_noise)
        return r.recommended if r.recommended is not None and confirmed else r.default if r.recommended else None

    def rows(self) -> list[dict[str, Any]]:
        r = self.result
        return candidate_rows(r.candidates, r.objective, r.slo, r.noise)

    def verdict(self) -> str:
        """The outcome in a few sentences: what is recommended, how sure, and what the verification found."""
        r, v = self.result, self.verification
        rec = r.recommended
        noise = (
            f"run-to-run noise ±{100 * r.relative_noise:.0f}%"
            if r.relative_noise == r.relative_noise
            else "noise unknown (nothing was repeated: give it a larger budget)"
        )
        head = (
            f"{len(r.candidates)} candidates, {r.spent_s:.0f} s searching and {self.verify_s:.0f} s verifying of a "
            f"{r.budget_s:.0f} s budget ({r.stopped}); {noise}."
        )
        if rec is None:
            text = f"{head} No candidate met the SLOs and ran without errors: nothing is recommended."
            measured = [(s, c) for c in r.candidates if c.failed is None and (s := r.summary(c)) is not None]
            if measured:
                s, c = min(measured, key=lambda sc: (sc[0].errors, r.slo.excess(sc[0])))
                text += f" The closest, {c.id} ({c.label}): " + ("; ".join(r.slo.breaches(s)) or f"{s.errors} errors")
            return text
        s = r.summary(rec, r.compared_at) or r.summary(rec)
        assert s is not None
        text = (
            f"{head} The search picked {rec.id} ({rec.label}): audio-s/s {s.audio_s_per_s:.3g}, TTFA p99 "
            f"{1e3 * s.ttfa_p99_s:.0f} ms, underrun p99 {1e3 * s.underrun_p99_s:.0f} ms at {s.n_requests} "
            f"requests, for {OBJECTIVES[r.objective]}."
        )
        if r.tied:
            text += f" Within noise of it: {', '.join(c.id for c in r.tied)} (a tie; it changes the fewest knobs)."
        if rec is r.default:
            return text + " The default is the recommendation: no change beat it by more than the noise."
        if v is not None:
            what = "within the noise" if v.within_noise else "outside the noise"
            text += (
                f" Verified in alternating runs against the default ({v.default.repeats} each, "
                f"{v.default.n_requests} requests): {100 * v.gain:+.0f}% on the objective, {what}."
            )
            if self.recommended is r.default:
                text += " Not confirmed, so the default stays the recommendation (recommended.yaml is the default)."
        return text

    def figure(self) -> go.Figure:
        r = self.result
        return pareto_figure(r.candidates, r.objective, r.slo, self.recommended, r.default)

    def to_dict(self) -> dict[str, Any]:
        r = self.result
        return {
            "workload": self.workload,
            "objective": r.objective,
            "slo": asdict(r.slo),
            "verdict": self.verdict(),
            "recommended": self.recommended.id if self.recommended else None,
            "search_pick": r.recommended.id if r.recommended else None,
            "tied": [c.id for c in r.tied],
            "compared_at_requests": r.compared_at,
            "relative_noise": r.relative_noise,
            "spent_s": r.spent_s,
            "verify_s": self.verify_s,
            "budget_s": r.budget_s,
            "stopped": r.stopped,
            "evidence": [asdict(e) for e in self.evidence],
            "verification": asdict(self.verification) if self.verification else None,
            "candidates": [_candidate(c) for c in r.candidates],
            "meta": self.meta,
        }

    def write(self, out: str | Path) -> dict[str, Path]:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"json": out / "tune.json", "csv": out / "tune.csv", "html": out / "tune.html"}
        paths["json"].write_text(json.dumps(no_nan(self.to_dict()), indent=1, default=str))
        rows = self.rows()
        with paths["csv"].open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        paths["html"].write_text(self.html())
        if self.config_yaml is not None:
            paths["yaml"] = out / "recommended.yaml"
            paths["yaml"].write_text(self.config_yaml)
        return paths

    def html(self) -> str:
        chart = self.figure().to_html(full_html=False, include_plotlyjs=True)
        rows = self.rows()
        head = "".join(f"<th>{html.escape(str(k))}</th>" for k in rows[0])
        body = "".join("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in r.values()) + "</tr>" for r in rows)
        evidence = "".join(f"<li>{html.escape(e.sentence)}</li>" for e in self.evidence)
        config = f"<h2>recommended.yaml</h2><pre>{html.escape(self.config_yaml)}</pre>" if self.config_yaml else ""
        meta = html.escape(json.dumps(no_nan(self.meta), indent=1, default=str))
        return (
            "<!doctype html><html><head><meta charset='utf-8'><title>Voxtrace tune</title><style>"
            "body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse;font-size:12px}"
            "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}</style></head><body>"
            f"<h1>Voxtrace tune: {html.escape(self.workload)}</h1><p>{html.escape(self.verdict())}</p>{chart}"
            + (f"<h2>Evidence</h2><ul>{evidence}</ul>" if evidence else "")
            + f"<h2>Candidates</h2><table><tr>{head}</tr>{body}</table>{config}<h2>Run</h2><pre>{meta}</pre>"
            "</body></html>"
        )


def candidate_rows(
    candidates: Sequence[Candidate], objective: str, slo: Slo, noise: Mapping[str, float] | None = None
) -> list[dict[str, Any]]:
    """One row per candidate, at the largest run size it reached; `spread`: max - min of the objective's score
    over its repeats there, corrected for drift (NaN with one run); `noise`: what the final comparison allowed for
    (the larger of its spread and the pooled relative spread times its score), NaN while the search runs; `drift`:
    the mean drift its scores were divided by (1: none; below 1 for throughput, above for TTFA: a slower machine)."""
    rows = []
    for c in candidates:
        s = Summary.of(objective, c.runs[n]) if (n := c.largest()) is not None else None
        row: dict[str, Any] = {"id": c.id, "label": c.label, **c.values}
        row.update(
            requests=s.n_requests if s else 0,
            repeats=s.repeats if s else 0,
            audio_s_per_s=s.audio_s_per_s if s else math.nan,
            spread=s.spread if s else math.nan,
            noise=(noise or {}).get(c.id, math.nan),
            drift=s.drift if s else math.nan,
            ttfa_p99_s=s.ttfa_p99_s if s else math.nan,
            underrun_p99_s=s.underrun_p99_s if s else math.nan,
            rtf_p99=s.rtf_p99 if s else math.nan,
            errors=s.errors if s else 0,
            meets_slo=s is not None and meets(slo, c, s),
            notes="; ".join(c.notes),
        )
        rows.append(row)
    return rows


def _cell(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else html.escape(str(v))


def _candidate(c: Candidate) -> dict[str, Any]:
    return {
        "id": c.id,
        "label": c.label,
        "values": c.values,
        "failed": c.failed,
        "notes": c.notes,
        "runs": {str(n): [asdict(m) for m in ms] for n, ms in sorted(c.runs.items())},
    }


def pareto_figure(
    candidates: Sequence[Candidate],
    objective: str,
    slo: Slo,
    recommended: Candidate | None = None,
    default: Candidate | None = None,
    title: str = "Candidates: audio-s/s against TTFA p99",
) -> go.Figure:
    """Each candidate at the largest run size it reached, with its repeats' range as error bars; the candidates
    that meet the SLOs and no other beats on both axes joined as the Pareto front; the TTFA SLO as a line. Drawn
    again as runs finish, before there is a recommendation."""
    fig = go.Figure()
    points = []
    ok: dict[str, bool] = {}
    for c in candidates:
        n = c.largest()
        if n is None:
            continue
        runs = c.runs[n]
        ok[c.id] = meets(slo, c, Summary.of(objective, runs))
        x = [1e3 * m.ttfa_p99_s for m in runs]
        y = [m.audio_s_per_s for m in runs]
        points.append((c, sum(x) / len(x), sum(y) / len(y), (min(x), max(x)), (min(y), max(y)), n))
    groups = (("meets the SLOs", True, PALETTE[0], "circle"), ("breaks an SLO or failed", False, "#9aa0a6", "x"))
    for name, good, color, symbol in groups:
        pts = [p for p in points if ok[p[0].id] == good]
        if not pts:
            continue
        fig.add_trace(
            go.Scatter(
                x=[p[1] for p in pts],
                y=[p[2] for p in pts],
                mode="markers+text",
                name=name,
                text=[p[0].id for p in pts],
                textposition="top center",
                marker={"color": color, "symbol": symbol, "size": 10},
                error_x={
                    "type": "data",
                    "symmetric": False,
                    "array": [p[3][1] - p[1] for p in pts],
                    "arrayminus": [p[1] - p[3][0] for p in pts],
                },
                error_y={
                    "type": "data",
                    "symmetric": False,
                    "array": [p[4][1] - p[2] for p in pts],
                    "arrayminus": [p[2] - p[4][0] for p in pts],
                },
                hovertext=[
                    f"{p[0].id}: {p[0].label}<br>{p[5]} requests × {len(p[0].runs[p[5]])}<br>" + "<br>".join(p[0].notes)
                    for p in pts
                ],
                hoverinfo="text+x+y",
            )
        )
    front = _front([(p[1], p[2]) for p in points if ok[p[0].id]])
    if front:
        fig.add_trace(
            go.Scatter(
                x=[x for x, _ in front],
                y=[y for _, y in front],
                mode="lines",
                name="Pareto front",
                line={"color": PALETTE[0], "dash": "dot"},
            )
        )
    for c, marker in ((recommended, "star"), (default, "circle-open")):
        p = next((p for p in points if c is not None and p[0] is c), None)
        if p is not None:
            label = "recommended" if marker == "star" else "default"
            fig.add_trace(
                go.Scatter(
                    x=[p[1]],
                    y=[p[2]],
                    mode="markers",
                    name=f"{label} ({c.id})",
                    marker={
                        "symbol": marker,
                        "size": 18,
                        "color": "#f2b705" if marker == "star" else "black",
                        "line": {"width": 2},
                    },
                )
            )
    if slo.ttfa_p99_s is not None:
        fig.add_vline(
            x=1e3 * slo.ttfa_p99_s,
            line_dash="dash",
            line_color="#d62728",
            annotation_text=f"TTFA p99 SLO {1e3 * slo.ttfa_p99_s:.0f} ms",
        )
    others = [
        f"underrun p99 ≤ {1e3 * slo.underrun_p99_s:.0f} ms" if slo.underrun_p99_s is not None else "",
        f"RTF p99 ≤ {slo.rtf_p99:g}" if slo.rtf_p99 is not None else "",
    ]
    subtitle = ", ".join(o for o in others if o)
    fig.update_layout(
        title=title + (f"<br><sup>also required: {subtitle}</sup>" if subtitle else ""),
        xaxis_title="TTFA p99 (ms, lower is better)",
        yaxis_title="audio s per s (higher is better)",
    )
    return fig


def _front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other beats on both axes (lower x, higher y), by x."""
    front, best = [], -math.inf
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if y > best:
            front.append((x, y))
            best = y
    return front
