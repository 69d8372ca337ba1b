"""The Gradio app (Synthesize, Compare, Benchmark, Tune, Runs) and the one FastAPI server that carries it, the HTTP API
and the player's audio stream."""

from __future__ import annotations

import gradio as gr
from fastapi import FastAPI

from ui.player import add_stream_route
from ui.server import create_server
from ui.state import EngineManager, describe
from ui.uploads import Uploads
from ui.views import benchmark, compare, runs, saved_voices, synthesize, tune
from ui.views.render import CARD_CSS

MAX_UPLOAD = "20mb"  # a reference clip is at most 30 s; nothing bigger needs to reach the server

RANDOM_WEIGHTS = (
    '<div class="vx-banner" id="vx-random-weights"><b>Tiny model with random weights.</b> '
    "The audio is noise; the timings are real. Start the app with <code>--model</code> and a real "
    "checkpoint to hear speech.</div>"
)


def build_app(manager: EngineManager) -> gr.Blocks:
    with gr.Blocks(title="Voxtrace", analytics_enabled=False) as app:
        uploads = Uploads(app)
        gr.Markdown(
            f"# Voxtrace\nQwen3-TTS serving engine with its profiler · serving engine: `{describe(manager.config)}`"
        )
        if manager.is_tiny:
            gr.HTML(RANDOM_WEIGHTS)
        with gr.Tab("Synthesize"):
            saved = synthesize.build(manager, uploads)
        with gr.Tab("Compare"):
            compare.build(manager, uploads)
        with gr.Tab("Benchmark"):
            benchmark.build(manager)
        with gr.Tab("Tune"):
            tune.build(manager)
        with gr.Tab("Runs") as runs_tab:
            shown = runs.build(manager)
        runs_tab.select(lambda: runs.refresh(manager), None, list(shown), api_visibility="private")
        app.load(lambda: saved_voices.choices(manager), None, [saved], api_visibility="private")
    return app


def create_app(manager: EngineManager) -> FastAPI:
    """One server: the HTTP API's routes (over the serving engine), the player's stream route, and the Gradio app at
    "/". Only `gr.Error` messages reach a page (show_error=False): other exceptions' text may name server paths."""
    server = create_server(manager.serving)
    add_stream_route(server, manager.streams)
    blocks = build_app(manager)
    blocks.queue(default_concurrency_limit=4)
    return gr.mount_gradio_app(server, blocks, path="/", max_file_size=MAX_UPLOAD, css=CARD_CSS, show_error=False)
