"""A streaming audio player of our own: the engine's chunks go to the browser as raw PCM over one HTTP response and play
back to back from a queue on the audio clock, so chunk seams are inaudible and playback starts with the first chunk.
The player starts the run itself at the click (`ui.live`), keeps a lead learned from earlier runs' arrival gaps, and
reports what the listener got (`ui.heard`) to the page's Generate event. The browser side is in `ui/js/`:

- `player.js`: the page's part (the click, the learned lead, the status line, the report);
- `fetcher.js`: a Worker that fetches and splits the stream, so the page's main thread is not on the audio's path;
- `sink.js`: the queue (`Sink`), shared by the AudioWorklet host `sink_worklet.js` and the fallback on the main thread.

Why not `gr.Audio(streaming=True)`: measured with Gradio 6.17 in headless Chromium (dev notes in the final report),
it re-encodes every chunk as a separate AAC (ADTS) segment through ffmpeg, which adds 1024-1792 samples (43-75 ms at
24 kHz) of encoder padding at every seam, and its HLS player started 0.7 s after the click, then stalled 2.6 s
waiting for segments that had already been sent (a 3.2 s clip took 6.1 s to play and lasted 3.5 s).
"""

from __future__ import annotations

import json
from pathlib import Path

from ui.live import SYNTH_ROUTE

JS = Path(__file__).with_name("js")

PLAYER_TEMPLATE = """
<div class="vx-player" data-state="idle">
  <div class="vx-status">The audio plays here as it is made.</div>
  <audio class="vx-replay" controls style="width:100%;display:none"></audio>
</div>
"""


def player_js(fields: list[str], sample_rate: int) -> str:
    """The player for gr.HTML's `js_on_load`: it plays at `sample_rate` (the engine's) and starts a run from the form's
    `fields` as the page reports them (`form_mirror_js`)."""
    source = (JS / "player.js").read_text()
    parts = {
        "__RATE__": str(int(sample_rate)),
        "__ROUTE__": SYNTH_ROUTE,
        "__FIELDS__": json.dumps(fields),
        "__SINK__": (JS / "sink.js").read_text(),
        "__FETCHER__": json.dumps((JS / "fetcher.js").read_text()),
        "__WORKLET__": json.dumps((JS / "sink_worklet.js").read_text()),
    }
    for key, value in parts.items():
        source = source.replace(key, value)
    return source


def form_mirror_js(fields: list[str]) -> str:
    """A browser-only event (no server call) for a page load or a field's change: it keeps the form's values where the
    player's click handler reads them, in `fields` order."""
    return f"""(...values) => {{
  const names = {json.dumps(fields)}, form = (window.vxFormValues = window.vxFormValues || {{}});
  names.forEach((name, i) => {{ form[name] = values[i]; }});
}}"""


def click_js(fields: list[str]) -> str:
    """The Generate button's browser side: the form's values (in `fields` order) go to the player, which runs and plays
    them (or takes over the run its click handler started with the same values), and what it heard goes to the Python
    event as its last input."""
    return f"""async (...values) => {{
  const names = {json.dumps(fields)}, form = {{}};
  names.forEach((name, i) => {{ form[name] = values[i]; }});
  const report = window.vxSynthesize ? await window.vxSynthesize(form) :
    JSON.stringify({{error: 'The player did not load: reload the page.'}});
  return [...values.slice(0, names.length), report];
}}"""
