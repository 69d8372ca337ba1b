"""A client for OpenAI-compatible speech servers (ours, vllm-omni's): `POST /v1/audio/speech` with `stream: true` and
`response_format: "pcm"` (16-bit little-endian mono at the model's rate), timed the way the reference benchmark
times it: from sending the request to the first non-empty bytes (TTFA), and each byte chunk's arrival (RTF, underrun,
end to end). Times are `now_ns()` seconds, the events' clock. `profile_url_async` gives such a run in the embedded
run's form (`profiling.run.RunResult`), so that a page compares a server with our engine on the same figures.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np

from profiling.metrics import RequestMetrics, ipc_overhead, request_metrics, run_metrics
from profiling.run import RunResult, write_run
from telemetry.events import (
    AUDIO_CHUNK,
    FINISHED,
    FIRST_AUDIO,
    INSTANT,
    LAST_AUDIO,
    REQUEST,
    Event,
    EventBatch,
    Timeline,
    merge_timelines,
    now_ns,
)

SPEECH_PATH = "/v1/audio/speech"
PCM_BYTES = 2  # int16
SENT = "sent"  # the client's instant for a request leaving it (the server's own ADMITTED is not seen from here)
NOT_AUDIO = ("text/", "application/json")  # content types of an answer that is not the PCM stream asked for


@dataclass
class Streamed:
    """One request as the client saw it: start, (arrival, samples) per non-empty byte chunk, the audio, the end."""

    request: str
    start_s: float
    arrivals_s: list[float] = field(default_factory=list)
    samples: list[int] = field(default_factory=list)
    pcm: bytearray = field(default_factory=bytearray)
    end_s: float = 0.0
    error: str | None = None

    def metrics(self, sample_rate: int) -> RequestMetrics | None:
        """The reference's per-request metrics; None when it failed or carried no audio."""
        if self.error is not None or not any(self.samples):
            return None
        return request_metrics(self.request, self.start_s, self.arrivals_s, self.samples, sample_rate, self.end_s)

    def audio(self) -> np.ndarray:
        n = len(self.pcm) // PCM_BYTES * PCM_BYTES
        return np.frombuffer(bytes(self.pcm[:n]), dtype="<i2").astype(np.float32) / 32768.0


def check_server_url(text: str) -> str:
    """`text` as a speech server's URL (http or https, a host, no credentials, query or fragment), stripped; a
    ValueError says what is wrong with it in words a page can show."""
    url = text.strip()
    example = "like http://127.0.0.1:8000"
    if len(url) > 2000:
        raise ValueError("the URL is too long")
    try:
        parts = urlsplit(url)
        valid = url.isprintable() and " " not in url and (parts.port is None or parts.port > 0)
    except ValueError:  # a port that is not a number in 0..65535
        valid = False
    if not valid:
        raise ValueError(f"that is not a valid URL; give the server's address, {example}")
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"a server URL starts with http:// or https://, {example}")
    if not parts.hostname:
        raise ValueError(f"the URL names no host; give the server's address, {example}")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ValueError("the URL may hold no user name, password, query or fragment")
    return url


def speech_url(base: str) -> str:
    """Accepts the server root (`http://host:port`), `.../v1`, or the full endpoint."""
    base = base.rstrip("/")
    if base.endswith(SPEECH_PATH):
        return base
    return base + ("/audio/speech" if base.endswith("/v1") else SPEECH_PATH)


async def stream_speech(client: httpx.AsyncClient, url: str, body: dict[str, Any], request: str) -> Streamed:
    """Send one request and read its PCM stream to the end. A refused or broken request comes back with `error`
    set (status and the server's message), never raised, so one failure does not stop a sweep."""
    out = Streamed(request, now_ns() / 1e9)
    received = 0  # bytes; a chunk may end mid-sample, so samples are counted on the running total
    try:
        async with client.stream("POST", url, json=body) as response:
            if response.status_code != 200:
                out.error = f"HTTP {response.status_code}: {_server_message(await response.aread())}"
                return out
            kind = response.headers.get("content-type", "")
            if kind.startswith(NOT_AUDIO):
                out.error = f"the server answered with {kind.split(';')[0]}, not an audio stream"
                return out
            async for data in response.aiter_bytes():
                if not data:
                    continue
                t = now_ns() / 1e9
                before = received // PCM_BYTES
                received += len(data)
                out.pcm += data
                if received // PCM_BYTES > before:
                    out.arrivals_s.append(t)
                    out.samples.append(received // PCM_BYTES - before)
    except httpx.ConnectError:
        out.error = "could not connect to the server"
    except httpx.TimeoutException:
        out.error = "the server did not answer in time"
    except httpx.HTTPError as exc:
        out.error = f"the connection failed ({exc})"
    finally:
        out.end_s = now_ns() / 1e9
    if out.error is None and not out.samples:
        out.error = "the stream carried no audio"
    return out


def _server_message(body: bytes) -> str:
    """An error answer's message: OpenAI's {"error": {"message"}}, FastAPI's {"detail"}, else the text, shortened."""
    text = body.decode(errors="replace")
    try:
        doc = json.loads(text)
    except ValueError:
        doc = None
    if isinstance(doc, dict):
        error = doc.get("error")
        message = error.get("message") if isinstance(error, dict) else error or doc.get("detail") or doc.get("message")
        if message:
            text = str(message)
    return " ".join(text.split())[:300]


async def run_requests(
    url: str,
    bodies: Sequence[dict[str, Any]],
    concurrency: int,
    *,
    progress: Callable[[int, int], None] | None = None,
    timeout_s: float = 600.0,
    headers: dict[str, str] | None = None,
) -> tuple[list[Streamed], float]:
    """Send `bodies` with at most `concurrency` in flight; (results in order, wall seconds first send to last end)."""
    slots = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    timeout = httpx.Timeout(timeout_s, connect=10.0)
    done = 0

    async with httpx.AsyncClient(timeout=timeout, limits=limits, headers=headers) as client:

        async def one(i: int, body: dict[str, Any]) -> Streamed:
            nonlocal done
            async with slots:
                result = await stream_speech(client, url, body, f"r{i}")
            done += 1
            if progress is not None:
                progress(done, len(bodies))
            return result

        start = now_ns()
        results = await asyncio.gather(*(one(i, b) for i, b in enumerate(bodies)))
        wall_s = (now_ns() - start) / 1e9
    return list(results), wall_s


async def profile_url_async(
    url: str,
    bodies: Sequence[dict[str, Any]],
    *,
    concurrency: int,
    sample_rate: int,
    run_dir: str | Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> RunResult:
    """`bodies` sent to the server at `url` (root, .../v1 or the endpoint) as `run_requests` does, as a `RunResult`
    with the run folder `profiling.run.write_run` writes: the client-side metrics, each request's audio, its errors,
    and a timeline of what the client saw. The server's events, utilization and breakdowns are not seen from here, so
    those stay empty."""
    streamed, wall_s = await run_requests(speech_url(url), bodies, concurrency, progress=progress)
    per_request = [m for s in streamed if (m := s.metrics(sample_rate)) is not None]
    timeline = client_timeline(streamed, f"client of {httpx.URL(url).host}")
    result = RunResult(
        requests=[s.request for s in streamed],
        sample_rate=sample_rate,
        wall_s=wall_s,
        metrics=run_metrics(per_request, wall_s),
        per_request=per_request,
        server_per_request=[],
        breakdowns={},
        ipc=ipc_overhead(timeline),
        timeline=timeline,
        audio={s.request: s.audio() for s in streamed},
        errors={s.request: s.error for s in streamed if s.error is not None},
        run_dir=Path(run_dir) if run_dir is not None else None,
    )
    if run_dir is not None:
        write_run(result, run_dir)
    return result


def client_timeline(streamed: Sequence[Streamed], process: str) -> Timeline:
    """Each request's instants as the client saw them (sent, first audio, every chunk with its samples, last audio,
    finished), on the events' clock, as one process's events, so the timeline figure and trace draw them."""
    pid = os.getpid()
    events = []
    for s in streamed:
        marks: list[tuple[str, float, dict[str, Any] | None]] = [(SENT, s.start_s, None)]
        if s.arrivals_s:
            marks.append((FIRST_AUDIO, s.arrivals_s[0], None))
        marks += [(AUDIO_CHUNK, t, {"samples": n}) for t, n in zip(s.arrivals_s, s.samples, strict=True)]
        if s.arrivals_s:
            marks.append((LAST_AUDIO, s.arrivals_s[-1], None))
        marks.append((FINISHED, s.end_s, None))
        events += [Event(INSTANT, name, REQUEST, pid, int(t * 1e9), 0, s.request, args) for name, t, args in marks]
    return merge_timelines([EventBatch(pid, process, events)])
