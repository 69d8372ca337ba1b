"""One sentence of evidence for each knob where the recommendation differs from the default, from our own runs:

    code2wav.executor = mp (default uni): audio-s/s 7.51 vs 6.15 (+22%); code2wav busy 31% vs 28% of the run; talker
    busy 80% vs 61% of the run; moving data 2.1 vs 0.3 ms per request (c03 against c00, 16 requests, 2 runs each).

The two runs compared differ in that knob only where the search measured such a pair: the recommendation against
itself with the knob at its default, else the default with the knob at the recommended value; failing both, the
recommendation against the default (other knobs differ too, and the sentence says so).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from profiling.search import SearchResult, Summary, Verification, changed

# signal -> (label, format of one value)
SIGNALS: dict[str, tuple[str, str]] = {
    "talker_busy_pct": ("talker busy", "{:.0f}%"),
    "code2wav_busy_pct": ("code2wav busy", "{:.0f}%"),
    "talker_batch_mean": ("mean talker batch", "{:.1f}"),
    "code2wav_batch_mean": ("mean code2wav batch", "{:.1f}"),
    "code2wav_decodes_per_request": ("code2wav decodes per request", "{:.1f}"),
    "talker_queue_p99_ms": ("wait for a talker slot p99", "{:.0f} ms"),
    "code2wav_queue_p99_ms": ("wait for code2wav p99", "{:.0f} ms"),
    "talker_paused_pct": ("talker rows paused for credits", "{:.0f}%"),
    "transfer_ms_per_request": ("moving data", "{:.1f} ms/request"),
    "handoff_p50_ms": ("hand-off p50", "{:.2f} ms"),
    "cpu_percent": ("CPU", "{:.0f}%"),
    "ttfa_p99_ms": ("TTFA p99", "{:.0f} ms"),
    "underrun_p99_ms": ("underrun p99", "{:.0f} ms"),
}
OBJECTIVE_LABELS = {"throughput": ("audio-s/s", "{:.3g}"), "ttfa": ("TTFA p99", "{:.0f} ms")}


@dataclass(frozen=True)
class Evidence:
    knob: str
    value: Any
    default: Any
    sentence: str
    compared: tuple[str, str]  # candidate ids: with the recommended value, with the default's


def explain(
    result: SearchResult, signals: Mapping[str, Sequence[str]], verification: Verification | None = None
) -> list[Evidence]:
    """Evidence for every knob the recommendation changes; `signals`: knob -> the signals that speak for it. The
    verification's runs stand for the recommendation against the default when the search has no closer pair."""
    rec, default = result.recommended, result.default
    if rec is None:
        return []
    out = []
    for knob in changed(rec.values, default.values):
        a, b, ids, alone = _pair(result, knob, verification)
        parts = [_objective(result, a, b)]
        for name in signals.get(knob, ()):
            va, vb = a.signals.get(name, math.nan), b.signals.get(name, math.nan)
            label, fmt = SIGNALS[name]
            if va == va and vb == vb and label != OBJECTIVE_LABELS[result.objective][0]:  # said first already
                parts.append(f"{label} {fmt.format(va)} vs {fmt.format(vb)}")
        runs = f", {min(a.repeats, b.repeats)} runs each" if min(a.repeats, b.repeats) > 1 else ""
        other = "" if alone else "; other knobs differ too"
        where = f"({ids[0]} against {ids[1]}, {a.n_requests} requests{runs}{other})"
        sentence = f"{knob} = {rec.values[knob]} (default {default.values[knob]}): " + "; ".join(parts) + f" {where}."
        out.append(Evidence(knob, rec.values[knob], default.values[knob], sentence, ids))
    return out


def _pair(
    result: SearchResult, knob: str, verification: Verification | None
) -> tuple[Summary, Summary, tuple[str, str], bool]:
    """(summary with the recommended value, with the default's, their ids, whether they differ in `knob` alone),
    at the largest run size both reached."""
    rec, default = result.recommended, result.default
    assert rec is not None
    alone = len(changed(rec.values, default.values)) == 1
    by_values = {_key(c.values): c for c in result.candidates if c.runs}
    pairs = [
        (rec, by_values.get(_key({**rec.values, knob: default.values[knob]})), True),
        (by_values.get(_key({**default.values, knob: rec.values[knob]})), default, True),
        (rec, default, alone),
    ]
    for a, b, single in pairs:
        if single or verification is None:
            common = set(a.runs) & set(b.runs) if a is not None and b is not None else set()
            if a is not None and b is not None and common:
                n = max(common)
                return result.summary(a, n), result.summary(b, n), (a.id, b.id), single  # type: ignore[return-value]
    assert verification is not None, "the recommendation and the default share no run size: verify them"
    return verification.recommended, verification.default, (rec.id, default.id), alone


def _key(values: Mapping[str, Any]) -> tuple:
    return tuple(sorted(values.items(), key=str))


def _objective(result: SearchResult, a: Summary, b: Summary) -> str:
    label, fmt = OBJECTIVE_LABELS[result.objective]
    va, vb = (a.audio_s_per_s, b.audio_s_per_s) if result.objective == "throughput" else (a.ttfa_p99_s, b.ttfa_p99_s)
    scale = 1.0 if result.objective == "throughput" else 1e3
    change = f"{100 * (va - vb) / vb:+.0f}%" if vb else "n/a"
    noise = max(a.spread, b.spread) if min(a.repeats, b.repeats) > 1 else result.relative_noise * abs(b.score)
    within = ", within noise" if noise == noise and abs(a.score - b.score) <= noise else ""
    return f"{label} {fmt.format(va * scale)} vs {fmt.format(vb * scale)} ({change}{within})"
