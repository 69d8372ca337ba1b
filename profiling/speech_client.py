"""A client for OpenAI-compatible speech servers (ours, vllm-omni's): `POST /v1/audio/speech` with `stream: true` and
`response_format: "pcm"` (16-bit little-endian mono at the model's rate), timed the way the reference benchmark
times it: from sending the request to the first non-empty bytes (TTFA), and each byte chunk's arrival (RTF, underrun,
end to end). Times are `now_ns()` seconds, the events' clock.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np

from profiling.metrics import RequestMetrics, request_metrics
from telemetry.events import now_ns

SPEECH_PATH = "/v1/audio/speech"
PCM_BYTES = 2  # int16


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
                text = (await response.aread()).decode(errors="replace")[:500]
                out.error = f"HTTP {response.status_code}: {text}"
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
    except httpx.HTTPError as exc:
        out.error = f"{type(exc).__name__}: {exc}"
    finally:
        out.end_s = now_ns() / 1e9
    if out.error is None and not out.samples:
        out.error = "the stream carried no audio"
    return out


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
