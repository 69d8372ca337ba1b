"""A streaming audio player of our own: the engine's chunks go to the browser as raw PCM over one HTTP response, and
a few lines of WebAudio schedule each piece at its exact sample time, so chunk seams are inaudible and playback starts
with the first chunk.

Why not `gr.Audio(streaming=True)`: measured with Gradio 6.17 in headless Chromium (dev notes in the final report),
it re-encodes every chunk as a separate AAC (ADTS) segment through ffmpeg, which adds 1024-1792 samples (43-75 ms at
24 kHz) of encoder padding at every seam, and its HLS player started 0.7 s after the click, then stalled 2.6 s
waiting for segments that had already been sent (a 3.2 s clip took 6.1 s to play and lasted 3.5 s).
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator

import numpy as np
from fastapi import FastAPI, HTTPException
from fastapi.responses import StreamingResponse

STREAM_ROUTE = "/voxtrace/stream"
MAX_STREAMS = 64  # finished streams kept for a late or repeated fetch; the oldest go first
WAIT_S = 30.0  # a stream that gets no audio for this long ends (a failed run closes it at once anyway)


class LiveStream:
    """One run's audio as it is made: the handler `push`es chunks, any number of readers iterate from the start."""

    def __init__(self, sample_rate: int) -> None:
        self.id = secrets.token_urlsafe(12)
        self.sample_rate = sample_rate
        self._chunks: list[bytes] = []
        self._closed = False
        self._cond = threading.Condition()

    @property
    def url(self) -> str:
        return f"{STREAM_ROUTE}/{self.id}"

    def push(self, samples: np.ndarray) -> None:
        data = np.ascontiguousarray(samples, dtype="<f4").tobytes()
        with self._cond:
            self._chunks.append(data)
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def read(self) -> Iterator[bytes]:
        """float32 little-endian PCM, chunk by chunk, blocking (without spinning) until more comes or it closes."""
        i = 0
        while True:
            with self._cond:
                if not self._cond.wait_for(lambda i=i: i < len(self._chunks) or self._closed, timeout=WAIT_S):
                    return
                if i >= len(self._chunks):
                    return
                data = self._chunks[i]
            i += 1
            yield data


class StreamHub:
    """The live streams of this server, by id (an unguessable token: a request can name no file on the server)."""

    def __init__(self) -> None:
        self._streams: dict[str, LiveStream] = {}
        self._lock = threading.Lock()

    def open(self, sample_rate: int) -> LiveStream:
        stream = LiveStream(sample_rate)
        with self._lock:
            self._streams[stream.id] = stream
            while len(self._streams) > MAX_STREAMS:
                self._streams.pop(next(iter(self._streams))).close()
        return stream

    def get(self, stream_id: str) -> LiveStream | None:
        with self._lock:
            return self._streams.get(stream_id)


def add_stream_route(app: FastAPI, hub: StreamHub) -> None:
    @app.get(STREAM_ROUTE + "/{stream_id}")
    def stream_pcm(stream_id: str) -> StreamingResponse:
        stream = hub.get(stream_id)
        if stream is None:
            raise HTTPException(404, "no such stream")
        headers = {"X-Sample-Rate": str(stream.sample_rate), "Cache-Control": "no-store"}
        return StreamingResponse(stream.read(), media_type="application/octet-stream", headers=headers)


PLAYER_TEMPLATE = """
<div class="vx-player" data-state="idle">
  <div class="vx-status">The audio plays here as it is made.</div>
  <audio class="vx-replay" controls style="width:100%;display:none"></audio>
</div>
"""

# `element`, `props` and `watch` are given by gr.HTML's js_on_load. `element.vxStats` is read by the browser test.
PLAYER_JS = """
// the template may re-render when the value changes: look the nodes up each time
const q = (sel) => element.querySelector(sel);
let session = 0, ctx = null;
function show(state, text) {
  const box = q('.vx-player'), status = q('.vx-status');
  if (box) box.dataset.state = state;
  if (status && text !== undefined) status.textContent = text;
}

function wavBlob(parts, rate) {
  const n = parts.reduce((a, p) => a + p.length, 0);
  const view = new DataView(new ArrayBuffer(44 + 2 * n));
  const text = (o, s) => { for (let i = 0; i < s.length; i++) view.setUint8(o + i, s.charCodeAt(i)); };
  text(0, 'RIFF'); view.setUint32(4, 36 + 2 * n, true); text(8, 'WAVEfmt ');
  view.setUint32(16, 16, true); view.setUint16(20, 1, true); view.setUint16(22, 1, true);
  view.setUint32(24, rate, true); view.setUint32(28, 2 * rate, true); view.setUint16(32, 2, true);
  view.setUint16(34, 16, true); text(36, 'data'); view.setUint32(40, 2 * n, true);
  let o = 44;
  for (const p of parts) for (let i = 0; i < p.length; i++, o += 2)
    view.setInt16(o, Math.max(-1, Math.min(1, p[i])) * 32767, true);
  return new Blob([view], {type: 'audio/wav'});
}

async function play(url) {
  const me = ++session;
  if (!url) return;
  const stats = {url, samples: 0, reads: 0, underruns: 0, firstAudioMs: null, done: false, error: null};
  element.vxStats = window.vxPlayerStats = stats;
  show('loading', 'Waiting for the first audio...');
  const hidden = q('.vx-replay');
  if (hidden) hidden.style.display = 'none';
  const t0 = performance.now();
  try {
    const resp = await fetch(url);
    if (!resp.ok) throw new Error('HTTP ' + resp.status);
    const rate = parseInt(resp.headers.get('X-Sample-Rate') || '24000');
    stats.rate = rate;
    if (ctx) ctx.close();
    ctx = new AudioContext({sampleRate: rate});  // no per-buffer resampling: the seams stay sample-exact
    if (ctx.state === 'suspended') ctx.resume().catch(() => {});
    const reader = resp.body.getReader();
    const parts = [];
    let rest = new Uint8Array(0), base = 0, at = 0;  // at: samples scheduled after `base` (context seconds)
    const LEAD = 0.05;
    while (true) {
      const {value, done} = await reader.read();
      if (me !== session) { reader.cancel(); return; }
      if (done) break;
      const buf = new Uint8Array(rest.length + value.length);
      buf.set(rest); buf.set(value, rest.length);
      const n = buf.length - (buf.length % 4);
      rest = buf.slice(n);
      if (n === 0) continue;
      const pcm = new Float32Array(buf.buffer.slice(0, n));
      parts.push(pcm);
      const ab = ctx.createBuffer(1, pcm.length, rate);
      ab.copyToChannel(pcm, 0);
      const src = ctx.createBufferSource();
      src.buffer = ab; src.connect(ctx.destination);
      if (stats.firstAudioMs === null) {
        stats.firstAudioMs = performance.now() - t0;
        base = ctx.currentTime + LEAD;
      } else if (base + at / rate < ctx.currentTime) {  // the player ran dry: restart a little ahead
        stats.underruns++;
        base = ctx.currentTime + LEAD; at = 0;
      }
      src.start(base + at / rate);
      at += pcm.length;
      stats.samples += pcm.length; stats.reads++;
      show('playing', `Streaming: ${(stats.samples / rate).toFixed(2)} s received, first audio after ` +
        `${stats.firstAudioMs.toFixed(0)} ms, ${stats.underruns} underrun(s).`);
    }
    stats.done = true;
    show('done', `Streamed ${(stats.samples / rate).toFixed(2)} s of audio in ${stats.reads} piece(s); ` +
      `first audio after ${(stats.firstAudioMs || 0).toFixed(0)} ms, ${stats.underruns} underrun(s). Replay:`);
    const replay = q('.vx-replay');
    if (replay) { replay.src = URL.createObjectURL(wavBlob(parts, rate)); replay.style.display = 'block'; }
  } catch (err) {
    stats.error = String(err);
    show('error', 'Playback failed: ' + err);
  }
}

watch('value', () => play(props.value));
if (props.value) play(props.value);
"""
