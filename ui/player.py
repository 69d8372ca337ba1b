"""A streaming audio player of our own: the engine's chunks go to the browser as raw PCM over one HTTP response, and
a few lines of WebAudio schedule each piece at its exact sample time, so chunk seams are inaudible and playback starts
with the first chunk. The player starts the run itself at the click (`ui.live`), keeps a lead over the playhead learned
from earlier runs' arrival gaps, and reports what the listener got (`ui.heard`) to the page's Generate event.

Why not `gr.Audio(streaming=True)`: measured with Gradio 6.17 in headless Chromium (dev notes in the final report),
it re-encodes every chunk as a separate AAC (ADTS) segment through ffmpeg, which adds 1024-1792 samples (43-75 ms at
24 kHz) of encoder padding at every seam, and its HLS player started 0.7 s after the click, then stalled 2.6 s
waiting for segments that had already been sent (a 3.2 s clip took 6.1 s to play and lasted 3.5 s).
"""

from __future__ import annotations

import json

from ui.live import SYNTH_ROUTE

PLAYER_TEMPLATE = """
<div class="vx-player" data-state="idle">
  <div class="vx-status">The audio plays here as it is made.</div>
  <audio class="vx-replay" controls style="width:100%;display:none"></audio>
</div>
"""

# `element`, `props` and `watch` are given by gr.HTML's js_on_load; `props.value` is the status line the page's Generate
# event sets. `window.vxPlayerStats` is read by the browser test.
PLAYER_JS = r"""
const q = (sel) => element.querySelector(sel);
const HISTORY = 'vx-player-lateness', KEEP = 10;  // how late chunks came after the audio before them, last runs (ms)
let session = 0, ctx = null;
function show(state, text) {
  const box = q('.vx-player'), status = q('.vx-status');
  if (box && state) box.dataset.state = state;
  if (status && text !== undefined) status.textContent = text;
}
document.addEventListener('click', (e) => {  // the click's own time: first sound is counted from here
  if (e.target.closest && e.target.closest('#vx-generate')) window.vxClickAt = e.timeStamp;
}, true);

function past() {
  try { const v = JSON.parse(localStorage.getItem(HISTORY) || '[]'); return Array.isArray(v) ? v : []; }
  catch (e) { return []; }
}
// The lead kept before the first sound: the lateness of the last runs (the second worst, so that one stall of this
// page, a plot being drawn, say, does not slow every later start) plus 15 ms; 60 ms before any run, at most 1 s.
function learnedMargin() {
  const p = past().sort((a, b) => b - a);
  const late = p.length === 0 ? 45 : p.length < 3 ? p[0] : p[1];
  return Math.min(1000, Math.max(15, late + 15));
}
function remember(lateness) {
  try { localStorage.setItem(HISTORY, JSON.stringify([...past(), lateness].slice(-KEEP))); } catch (e) {}
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

// Run the form over HTTP and play it; resolves to the report for the page's Generate event (JSON).
async function synthesize(form) {
  const me = ++session;
  const clickAt = window.vxClickAt !== undefined && performance.now() - window.vxClickAt < 5000 ?
    window.vxClickAt : performance.now();
  window.vxClickAt = undefined;
  const stats = {samples: 0, chunks: 0, underruns: 0, underrunMs: 0, worstGapMs: 0, firstSoundMs: null,
                 marginMs: learnedMargin(), lead: [], done: false, error: null};
  element.vxStats = window.vxPlayerStats = stats;
  const fail = (message) => {
    stats.error = message; stats.done = true;
    show('error', message);
    return JSON.stringify({error: message});
  };
  show('loading', 'Generating…');
  const replay = q('.vx-replay');
  if (replay) { replay.style.display = 'none'; replay.removeAttribute('src'); }
  if (ctx) ctx.close();
  ctx = new AudioContext({sampleRate: 24000});  // made while the request is on its way
  if (ctx.state === 'suspended') ctx.resume().catch(() => {});
  let resp;
  try {
    resp = await fetch('__ROUTE__', {method: 'POST', headers: {'Content-Type': 'application/json'},
                                     body: JSON.stringify(form)});
  } catch (err) { return fail('The server could not be reached.'); }
  if (!resp.ok) {
    let message = 'The server refused the request (HTTP ' + resp.status + ').';
    try { message = (await resp.json()).error || message; } catch (e) {}
    return fail(message);
  }
  const run = resp.headers.get('X-Run-Id'), rate = parseInt(resp.headers.get('X-Sample-Rate') || '24000');
  if (rate !== ctx.sampleRate) { ctx.close(); ctx = new AudioContext({sampleRate: rate}); }
  const reader = resp.body.getReader(), parts = [];
  let buf = new Uint8Array(0), base = 0, at = 0, heardUpTo = 0, firstArrival = 0, lateness = 0, complete = false;
  const play = (pcm) => {  // schedule one chunk right after the one before
    const now = ctx.currentTime, arrival = performance.now();
    if (stats.chunks === 0) {
      firstArrival = arrival;
      base = now + stats.marginMs / 1000;
      const latency = (ctx.outputLatency || ctx.baseLatency || 0) * 1000;
      stats.firstSoundMs = arrival - clickAt + stats.marginMs + latency;
      stats.outputLatencyMs = latency;
    } else {
      const ahead = base + at / rate - now;  // audio still queued when this chunk came (s)
      stats.lead.push([arrival - firstArrival, ahead * 1000]);
      lateness = Math.max(lateness, arrival - firstArrival - heardUpTo * 1000 / rate);
      if (ahead < 0) {  // ran dry: restart a little ahead
        const gap = -ahead * 1000 + 20;
        stats.underruns++; stats.underrunMs += gap; stats.worstGapMs = Math.max(stats.worstGapMs, gap);
        base = now + 0.02; at = 0;
      }
    }
    const ab = ctx.createBuffer(1, pcm.length, rate);
    ab.copyToChannel(pcm, 0);
    const src = ctx.createBufferSource();
    src.buffer = ab; src.connect(ctx.destination);
    src.start(base + at / rate);
    at += pcm.length; heardUpTo += pcm.length;
    stats.samples += pcm.length; stats.chunks++;
    parts.push(pcm);
    show('playing', `Playing: ${(stats.samples / rate).toFixed(2)} s received in ${stats.chunks} chunk(s), ` +
      `first sound ${stats.firstSoundMs.toFixed(0)} ms after the click, ${stats.underruns} underrun(s).`);
  };
  try {
    while (!complete) {
      const {value, done} = await reader.read();
      if (me !== session) { reader.cancel(); return JSON.stringify({error: 'Replaced by a newer run.'}); }
      if (done) break;
      const joined = new Uint8Array(buf.length + value.length);
      joined.set(buf); joined.set(value, buf.length);
      buf = joined;
      while (buf.length >= 4) {  // frames: uint32 sample count, then the float32 samples; 0 ends the stream
        const n = new DataView(buf.buffer, buf.byteOffset, 4).getUint32(0, true);
        if (n === 0) { complete = true; break; }
        if (buf.length < 4 + 4 * n) break;
        play(new Float32Array(buf.slice(4, 4 + 4 * n).buffer));
        buf = buf.slice(4 + 4 * n);
      }
    }
  } catch (err) { stats.error = 'The stream was cut.'; }
  if (complete && stats.chunks > 1) remember(lateness);
  stats.done = true;
  if (!complete) stats.error = stats.error || 'The stream ended early.';
  show(complete ? 'done' : 'error', complete ?
    `Received ${(stats.samples / rate).toFixed(2)} s in ${stats.chunks} chunk(s); the run's profile follows.` :
    'The stream ended early; the run\'s result follows.');
  if (replay && parts.length) {
    replay.src = URL.createObjectURL(wavBlob(parts, rate));
    replay.style.display = 'block';
  }
  return JSON.stringify({run, heard: {
    first_sound_ms: stats.firstSoundMs || 0, chunks: stats.chunks, underruns: stats.underruns,
    underrun_total_ms: stats.underrunMs, worst_gap_ms: stats.worstGapMs, margin_ms: stats.marginMs,
    lead: stats.lead.slice(0, 4096)}});
}
window.vxSynthesize = synthesize;
watch('value', () => { if (props.value) show(undefined, props.value); });
""".replace("__ROUTE__", SYNTH_ROUTE)


def click_js(fields: list[str]) -> str:
    """The Generate button's browser side: the form's values (in `fields` order) go to the player, which runs and plays
    them, and what it heard goes to the Python event as its last input."""
    return f"""async (...values) => {{
  const names = {json.dumps(fields)}, form = {{}};
  names.forEach((name, i) => {{ form[name] = values[i]; }});
  const report = window.vxSynthesize ? await window.vxSynthesize(form) :
    JSON.stringify({{error: 'The player did not load: reload the page.'}});
  return [...values.slice(0, names.length), report];
}}"""
