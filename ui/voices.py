"""Saved voices: reference clips saved under a name, to clone again later, kept on disk so they outlive the app.

Owner model: saved voices belong to the server, not to a visitor. Every visitor of the page sees every saved voice,
can clone with it and can delete it. Names are unique: saving under a name already taken is refused (delete the old
voice first). The library is bounded by `VoiceLimits` (how many voices, how many bytes of clips together); saving
past a limit is refused with a message that says which, and no voice is ever evicted to make room.

On disk, under the library's folder, a voice is two files named by a random id, never by the visitor's name:
`<id>.clip` (the clip's bytes as uploaded) and `<id>.json` (its name, transcript and x-vector-only flag). Each is
written under a temporary name and renamed into place, the JSON last, so a save that was cut short leaves no voice.
The folder is read when the library opens; one app process per folder.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import secrets
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import soundfile as sf

log = logging.getLogger("voxtrace.voices")
NAME = re.compile(r"\w[\w .'()-]*")  # a word character first; no "/", "\\", control characters or leading dots
ID = re.compile(r"[0-9a-f]{16}")


@dataclass(frozen=True)
class VoiceLimits:
    """How much the library holds; past either bound a save is refused."""

    max_voices: int = 32
    max_bytes: int = 256 * 2**20  # all clips together
    max_name_chars: int = 40

    def __post_init__(self) -> None:
        for name in ("max_voices", "max_bytes", "max_name_chars"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class SavedVoice:
    """A cloned voice to pick again: the clip and how it was used (the engine caches its x-vector by content)."""

    name: str
    clip: bytes
    ref_text: str | None
    x_vector_only: bool


class VoiceError(ValueError):
    """A save or delete the library refuses; the message is for the visitor."""


@dataclass(frozen=True)
class _Entry:
    """What the JSON file holds, plus the clip's size."""

    id: str
    name: str
    ref_text: str | None
    x_vector_only: bool
    created: float
    size: int = 0


class VoiceLibrary:
    def __init__(self, folder: Path, limits: VoiceLimits | None = None) -> None:
        self.folder = folder
        self.limits = limits or VoiceLimits()
        self._lock = threading.Lock()
        self._entries = self._load()  # name -> entry, oldest first

    def names(self) -> list[str]:
        with self._lock:
            return list(self._entries)

    @property
    def used_bytes(self) -> int:
        with self._lock:
            return sum(e.size for e in self._entries.values())

    def get(self, name: str) -> SavedVoice | None:
        with self._lock:
            entry = self._entries.get(name)
            if entry is None:
                return None
            try:
                clip = self._clip_path(entry.id).read_bytes()
            except OSError as exc:  # removed from the folder behind the app's back
                log.warning("saved voice %r is gone: %s", name, exc)
                del self._entries[name]
                return None
        return SavedVoice(entry.name, clip, entry.ref_text, entry.x_vector_only)

    def save(self, voice: SavedVoice) -> str:
        """Save `voice`; returns the name it is saved under (stripped). `VoiceError` says why not."""
        name = self._check_name(voice.name)
        check_audio(voice.clip)
        entry = _Entry(secrets.token_hex(8), name, voice.ref_text, voice.x_vector_only, time.time(), len(voice.clip))
        with self._lock:
            if name in self._entries:
                raise VoiceError(f"A voice named {name!r} is already saved: choose another name, or delete it first.")
            if len(self._entries) >= self.limits.max_voices:
                raise VoiceError(
                    f"The library is full ({self.limits.max_voices} voices): delete a voice before saving another."
                )
            used = sum(e.size for e in self._entries.values())
            if used + entry.size > self.limits.max_bytes:
                raise VoiceError(
                    f"This clip ({_mib(entry.size)}) does not fit: the library holds {_mib(used)} of its "
                    f"{_mib(self.limits.max_bytes)}. Delete a voice, or save a shorter clip."
                )
            self.folder.mkdir(parents=True, exist_ok=True)
            _write(self._clip_path(entry.id), voice.clip)
            meta = {k: v for k, v in asdict(entry).items() if k not in ("id", "size")}
            _write(self._meta_path(entry.id), json.dumps(meta).encode())
            self._entries[name] = entry
        return name

    def delete(self, name: str) -> None:
        with self._lock:
            entry = self._entries.pop(name, None)
            if entry is None:
                raise VoiceError(f"No saved voice is named {name!r}.")
            self._meta_path(entry.id).unlink(missing_ok=True)  # the JSON first: a voice without it is gone
            self._clip_path(entry.id).unlink(missing_ok=True)

    def _check_name(self, name: str) -> str:
        """The name, stripped, when it can name a voice; else `VoiceError` saying what is allowed."""
        name = name.strip()
        if not name:
            raise VoiceError("Give the voice a name.")
        if len(name) > self.limits.max_name_chars or not NAME.fullmatch(name):
            raise VoiceError(
                f"A voice name is 1 to {self.limits.max_name_chars} letters, digits, spaces or . ' ( ) - _, "
                "starting with a letter or digit."
            )
        return name

    def _clip_path(self, voice_id: str) -> Path:
        return self.folder / f"{voice_id}.clip"

    def _meta_path(self, voice_id: str) -> Path:
        return self.folder / f"{voice_id}.json"

    def _load(self) -> dict[str, _Entry]:
        """The voices saved in the folder; leftovers of a save that was cut short are removed."""
        entries = []
        for path in self.folder.glob("*"):
            stem = path.name.split(".", 1)[0]
            if not ID.fullmatch(stem):
                continue  # not ours
            if path.name.endswith(".tmp") or (path.suffix == ".clip" and not self._meta_path(stem).exists()):
                path.unlink(missing_ok=True)
            elif path.suffix == ".json":
                try:
                    meta = json.loads(path.read_text())
                    entry = _Entry(stem, **meta, size=self._clip_path(stem).stat().st_size)
                except (OSError, ValueError, TypeError) as exc:
                    log.warning("skipping saved voice %s: %s", path.name, exc)
                    continue
                entries.append(entry)
        return {e.name: e for e in sorted(entries, key=lambda e: e.created)}


def check_audio(clip: bytes) -> None:
    """`VoiceError` unless `clip` is an audio file soundfile can read (the engine checks the rest when it is used)."""
    try:
        sf.info(io.BytesIO(clip))
    except RuntimeError as exc:  # soundfile's LibsndfileError
        raise VoiceError("That clip is not a readable audio file (wav, flac, ogg or mp3).") from exc


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"
