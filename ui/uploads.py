"""The one door through which the app reads a file that a client names: only a file Gradio itself stored from an
upload (`POST /gradio_api/upload`, which the page's upload and microphone and `gradio_client.handle_file` use).

A Gradio event carries its files as server paths, and any client can put any path there. Gradio checks those paths
only in an app it launched itself (`Blocks.launch`); mounted into our FastAPI app (`gr.mount_gradio_app`) it copies
whatever path it is given into its cache before a handler runs. So the check is ours, and it is made twice with the
same rule: in the clip widgets (`Uploads.clip_input`), before Gradio would copy anything, and in `Uploads.read`,
where a handler reads the clip. A path is accepted only when it is exactly one that Gradio's upload route returned
(`Blocks.upload_file_set`); anything else is refused with one message before the file system is touched (no open, no
stat), so the answer says nothing about what exists on the server.

Uploads are not tied to a session (Gradio's upload route knows none), but an upload's path holds a keyed hash of its
content (`<cache>/<sha256(server secret + bytes)>/<name>`): only the client that uploaded it was told the path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr

MAX_UPLOAD_MB = 20  # a reference clip is at most 30 s; nothing bigger needs to reach the server
NOT_UPLOADED = "That clip was not uploaded to this page: upload or record it again."


class Uploads:
    """The files Gradio stored from uploads to `blocks`, and the only way the views read one."""

    def __init__(self, blocks: gr.Blocks) -> None:
        self._blocks = blocks

    def check(self, path: str) -> str:
        """`path` itself when Gradio stored it from an upload; else `gr.Error(NOT_UPLOADED)`. A string comparison
        only: the file system is not asked."""
        if not isinstance(path, str) or path not in self._blocks.upload_file_set:
            raise gr.Error(NOT_UPLOADED)
        return path

    def read(self, path: str | None) -> bytes | None:
        """The bytes of an uploaded clip (None for no clip). Uploads are bounded by the app's `max_file_size`."""
        return None if path is None else Path(self.check(path)).read_bytes()

    def clip_input(self, **kwargs: Any) -> gr.Audio:
        """A reference-clip widget for a view: a `gr.Audio` (type "filepath") whose files pass `check` before Gradio
        moves them into its cache (its two methods for that would copy a file from anywhere)."""
        clip = gr.Audio(type="filepath", **kwargs)
        move, move_async = clip.move_resource_to_block_cache, clip.async_move_resource_to_block_cache

        def checked(path: str | None) -> str | None:
            return move(path if path is None else self.check(path))

        async def checked_async(path: str | None) -> str | None:
            return await move_async(path if path is None else self.check(path))

        # on the instance, not a subclass: Gradio writes a .pyi stub beside any module that subclasses a component
        clip.move_resource_to_block_cache = checked  # type: ignore[method-assign]
        clip.async_move_resource_to_block_cache = checked_async  # type: ignore[method-assign]
        return clip
