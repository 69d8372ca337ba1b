"""The Gradio app (Synthesize, Compare, Benchmark, Tune, Runs) and the one FastAPI server that carries it, the HTTP API
and the player's audio stream."""

from __future__ import annotations

from typing import Any

import gradio as gr
from fastapi import FastAPI

from ui.live import Feed, add_live_route
from ui.server import create_server
from ui.state import AppState
from ui.synthesis import Synthesis, form_from_json, run_synthesis
from ui.uploads import MAX_UPLOAD_MB, Uploads
from ui.views import benchmark, compare, runs, saved_voices, synthesize, tune
from ui.views.render import CARD_CSS

RANDOM_WEIGHTS = (
    '<div class="vx-banner" id="vx-random-weights"><b>Tiny model with random weights.</b> '
    "The audio is noise; the timings are real. Start the app with <code>--model</code> and a real "
    "checkpoint to hear speech.</div>"
)


def build_app(app_state: AppState) -> gr.Blocks:
    engines = app_state.engines
    with gr.Blocks(title="Voxtrace", analytics_enabled=False) as app:
        uploads = Uploads(app)
        gr.Markdown("# Voxtrace\nQwen3-TTS serving engine with its profiler")
        header = gr.Markdown(engines.summary(), elem_id="vx-engine")
        if engines.info.tiny:
            gr.HTML(RANDOM_WEIGHTS)
        with gr.Tab("Synthesize"):
            saved = synthesize.build(app, app_state, uploads, header)
        with gr.Tab("Compare"):
            compare.build(app_state, uploads)
        with gr.Tab("Benchmark"):
            benchmark.build(app_state)
        with gr.Tab("Tune"):
            tune.build(app_state)
        with gr.Tab("Runs") as runs_tab:
            shown = runs.build(app_state.runs)
        runs_tab.select(lambda: runs.refresh(app_state.runs), None, list(shown), api_visibility="private")
        app.load(
            lambda: (saved_voices.choices(app_state.voices), engines.summary()),
            None,
            [saved, header],
            api_visibility="private",
            show_progress="hidden",  # a progress overlay left on the hidden voice box (another task) blocks the picker
        )
    return app


def create_app(app_state: AppState) -> FastAPI:
    """One server: the HTTP API's routes (over the serving engine), the player's Generate route (`ui.live`), and the
    Gradio app at "/". Only `gr.Error` messages reach a page (show_error=False): other exceptions' text may name server
    paths."""
    engines = app_state.engines
    server = create_server(engines.serving, voices=app_state.voices, others=engines.others())
    blocks = build_app(app_state)
    uploads = Uploads(blocks)

    async def start(form: dict[str, Any], feed: Feed) -> Synthesis:
        return await run_synthesis(app_state, uploads, form_from_json(form), feed)

    add_live_route(server, app_state.live, start)
    blocks.queue(default_concurrency_limit=4)
    return gr.mount_gradio_app(
        server, blocks, path="/", max_file_size=f"{MAX_UPLOAD_MB}mb", css=CARD_CSS, show_error=False
    )
