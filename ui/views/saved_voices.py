"""The saved-voice row of the Synthesize view: pick a voice of the server's library (`ui.voices`), save the clip
above under a name, delete a voice. The library is shared by every visitor."""

from __future__ import annotations

import base64
import html
import io
import mimetypes
from typing import Any

import gradio as gr
import soundfile as sf

from ui.uploads import Uploads
from ui.voices import SavedVoice, VoiceError, VoiceLibrary

NO_VOICE = "(upload or record a clip)"


def choices(voices: VoiceLibrary, value: str = NO_VOICE) -> Any:
    """The picker as the library is now."""
    return gr.update(choices=[NO_VOICE, *voices.names()], value=value)


def saved_voice(voices: VoiceLibrary, name: str | None) -> SavedVoice | None:
    """The voice picked, or None for none; `gr.Error` for a name the library does not hold (any more)."""
    if not name or name == NO_VOICE:
        return None
    voice = voices.get(name)
    if voice is None:
        raise gr.Error(f"No saved voice is named {name!r} (any more).")
    return voice


def shown(voices: VoiceLibrary, name: str | None) -> str:
    """The picked voice as the page shows it: its clip (a player) and its transcript, or that it is x-vector only."""
    voice = None if not name or name == NO_VOICE else voices.get(name)
    if voice is None:
        return ""
    kind = mimetypes.guess_type(f"clip.{sf.info(io.BytesIO(voice.clip)).format.lower()}")[0] or "audio/wav"
    clip = base64.b64encode(voice.clip).decode()
    said = "x-vector only (no transcript)" if voice.x_vector_only else f"“{html.escape(voice.ref_text or '')}”"
    return (
        f'<div class="vx-saved-voice"><audio controls src="data:{kind};base64,{clip}" style="width:100%"></audio>'
        f"<div>{html.escape(voice.name)}: {said}. Generate clones it when no clip is uploaded above.</div></div>"
    )


def save_voice(
    voices: VoiceLibrary, uploads: Uploads, name: str, ref_audio: str | None, ref_text: str, x_vector_only: bool
) -> Any:
    clip = uploads.read(ref_audio)
    if clip is None:
        raise gr.Error("Upload or record a reference clip first.")
    try:
        name = voices.save(SavedVoice(name, clip, ref_text or None, x_vector_only))
    except VoiceError as exc:
        raise gr.Error(str(exc)) from exc
    return choices(voices, name)


def delete_voice(voices: VoiceLibrary, name: str | None) -> Any:
    if not name or name == NO_VOICE:
        raise gr.Error("Pick a saved voice to delete.")
    try:
        voices.delete(name)
    except VoiceError as exc:
        raise gr.Error(str(exc)) from exc
    return choices(voices)


def build(
    voices: VoiceLibrary, uploads: Uploads, clip: gr.Audio, ref_text: gr.Textbox, x_vector_only: gr.Checkbox
) -> gr.Dropdown:
    """The row; returns the picker (a Synthesize input, refreshed by the app when a page loads)."""
    with gr.Row():
        # any value: the library changes under every page, so the handler checks the name, not the page's choices
        saved = gr.Dropdown([NO_VOICE, *voices.names()], value=NO_VOICE, label="saved voice", allow_custom_value=True)
        name = gr.Textbox(label="save this clip as", scale=1)
        save = gr.Button("save voice", size="sm")
        delete = gr.Button("delete voice", size="sm", variant="stop")
    picked = gr.HTML("", elem_id="vx-saved-voice")
    saved.change(lambda name: shown(voices, name), [saved], [picked], api_visibility="private")
    save.click(
        lambda voice_name, path, text, x_only: save_voice(voices, uploads, voice_name, path, text, x_only),
        [name, clip, ref_text, x_vector_only],
        [saved],
        api_name="save_voice",
    )
    delete.click(lambda v: delete_voice(voices, v), [saved], [saved], api_name="delete_voice")
    return saved
