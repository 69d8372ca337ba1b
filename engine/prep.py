"""Prompt prep at the engine's edge, the one validator of a request: `check` its fields' types and sizes before it
takes a place, `prepare` it against the loaded checkpoint (task, language, speaker, voice) on the prep thread, tokenize
it and prepare its voice, so that the talker stage receives a `TalkerJob` it can lay out without further checks.

The voice (x-vector, and the reference codes for ICL) is cached by the content of the decoded 24 kHz clip, bounded in
bytes, so a second request with the same clip skips the speaker encoder and the codec encoder.

A random-weight model (the embedded tiny one) never draws EOS on its own, so a request that names no frame limit is
given about what a speaker would need for its text (`spoken_frames`) rather than run to the engine's limit.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import random
import threading
from collections import OrderedDict

import numpy as np

from engine.config import LimitsConfig
from engine.memory import FRAME_RATE
from engine.model.audio import ReferenceAudio, load_reference_audio, prepare_reference_audio
from engine.model.prompt import PromptError, check_language, check_speaker, check_text
from engine.model.qwen3_tts import Qwen3TTS, VoicePrompt
from engine.model.sampling import SamplingError, SamplingParams
from engine.request import RequestError, SpeechRequest, Task
from engine.stages.messages import TalkerJob

MAX_NAME_CHARS = 64  # task, language, speaker: names, echoed in errors
MAX_REQUEST_ID_CHARS = 128
MAX_SEED = 2**63 - 1
REQUEST_FIELD = {"text": "input", "speaker": "voice"}  # the model's names of the fields a request names otherwise
CHARS_PER_SECOND = 15  # a brisk speaker's pace, in characters of text
MARGIN_FRAMES = 12  # about a second


def spoken_frames(text: str) -> int:
    """Frames (80 ms each) a speaker needs for `text` at `CHARS_PER_SECOND`, plus `MARGIN_FRAMES`: the default
    length of a random-weight model's request, which would otherwise run to the engine's limit."""
    return math.ceil(len(text.strip()) * FRAME_RATE / CHARS_PER_SECOND) + MARGIN_FRAMES


class VoiceCache:
    """LRU of prepared voices keyed by (clip hash, ICL or not), bounded by the bytes of the tensors it holds."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple[str, bool], VoicePrompt] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    @staticmethod
    def _size(voice: VoicePrompt) -> int:
        codes = 0 if voice.ref_codes is None else voice.ref_codes.numel() * voice.ref_codes.element_size()
        return voice.x_vector.numel() * voice.x_vector.element_size() + codes

    def get(self, key: tuple[str, bool]) -> VoicePrompt | None:
        with self._lock:
            voice = self._entries.get(key)
            if voice is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return voice

    def put(self, key: tuple[str, bool], voice: VoicePrompt) -> None:
        size = self._size(voice)
        with self._lock:
            if key in self._entries or size > self.max_bytes:
                return
            self._entries[key] = voice
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, old = self._entries.popitem(last=False)
                self._bytes -= self._size(old)

    @property
    def bytes(self) -> int:
        return self._bytes


class PromptPrep:
    def __init__(
        self, model: Qwen3TTS, limits: LimitsConfig, voice_cache_bytes: int, random_weights: bool = False
    ) -> None:
        self.model = model
        self.random_weights = random_weights  # lengths follow the text (`spoken_frames`) when none is asked
        self.task = Task.of_model_type(model.model_type)
        self.limits = limits
        self.voices = VoiceCache(voice_cache_bytes)

    def check(self, request: SpeechRequest) -> None:
        """Every field's type and size, before any work is spent on the request (no tokenizing, no decoding), so it
        runs on the caller's side before the request takes a place: a `RequestError` names the first bad field as
        the HTTP API calls it. What depends on the loaded checkpoint is left to `prepare`."""
        limits = self.limits
        rid = request.request_id
        if not isinstance(rid, str) or not 0 < len(rid) <= MAX_REQUEST_ID_CHARS:
            raise RequestError("request_id", f"must be text of 1 to {MAX_REQUEST_ID_CHARS} characters")
        _check_text("input", request.text, limits.max_text_chars)
        _check_text("language", request.language, MAX_NAME_CHARS)
        for name, value, limit in (
            ("task", request.task, MAX_NAME_CHARS),
            ("voice", request.speaker, MAX_NAME_CHARS),
            ("instructions", request.instruct, limits.max_instruct_chars),
            ("ref_text", request.ref_text, limits.max_ref_text_chars),
        ):
            if value is not None:
                _check_text(name, value, limit)
        if not isinstance(request.x_vector_only, bool):
            raise RequestError("x_vector_only_mode", "must be true or false")
        if request.non_streaming_mode is not None and not isinstance(request.non_streaming_mode, bool):
            raise RequestError("non_streaming_mode", "must be true or false")
        audio = request.ref_audio
        if not (audio is None or isinstance(audio, (bytes, bytearray, memoryview)) or _is_waveform(audio)):
            raise RequestError("ref_audio", "must be the bytes of an audio file, or (samples, sample_rate)")
        if request.sampling is not None:
            if not isinstance(request.sampling, SamplingParams):
                raise RequestError("sampling", "must be sampling settings")
            try:  # re-checked: the settings may have been changed after they were built
                dataclasses.replace(request.sampling)
            except SamplingError as exc:
                raise RequestError(exc.field, exc.message) from None
        _check_whole("seed", request.seed, 0, MAX_SEED)
        _check_whole("max_new_tokens", request.max_new_tokens, 1, limits.max_new_tokens, "this engine's limit")

    def prepare(self, request: SpeechRequest) -> TalkerJob:
        """The request as a talker job, or a `RequestError` naming the first bad field."""
        self.check(request)
        task = self._task(request)
        cfg, tok = self.model.config, self.model.text_tokenizer
        try:
            check_text(request.text)
            check_language(cfg, request.language)
            if task is Task.CUSTOM_VOICE:
                check_speaker(cfg, request.speaker)
        except PromptError as exc:
            raise RequestError(REQUEST_FIELD.get(exc.field, exc.field), exc.message) from None
        if task is not Task.VOICE_CLONE and request.ref_audio is not None:
            raise RequestError("ref_audio", f"only voice_clone uses a reference clip, not {task}")
        params = self._sampling(request)
        seed = request.seed
        if seed is None and (params.do_sample or params.subtalker_dosample):
            seed = random.randrange(2**31)  # reported on every chunk, so the run can be repeated
        job = TalkerJob(
            request_id=request.request_id,
            text_ids=tok.assistant_text_ids(request.text.strip()),
            language=request.language,
            params=params,
            seed=seed,
            credits=self.limits.credits,
            non_streaming=request.non_streaming_mode,
        )
        if task is Task.VOICE_CLONE:
            voice = self.voice(request)
            job.x_vector = voice.x_vector
            if voice.icl:
                job.ref_codes = voice.ref_codes
                job.ref_ids = tok.ref_text_ids(request.ref_text.strip())
            return job
        if task is Task.CUSTOM_VOICE:
            job.speaker = request.speaker
        if request.instruct:
            job.instruct_ids = tok.instruct_ids(request.instruct)
        return job

    def _task(self, request: SpeechRequest) -> Task:
        """The request's task (by any of its names), which must be the loaded checkpoint's."""
        if request.task is None:
            return self.task
        try:
            task = Task.named(request.task)
        except ValueError as exc:
            raise RequestError("task", str(exc)) from None
        if task is not self.task:
            raise RequestError("task", f"the loaded checkpoint serves '{self.task}', not '{task}'")
        return task

    def _sampling(self, request: SpeechRequest) -> SamplingParams:
        """The request's settings with its frame limit: `max_new_tokens` as asked (`check` refused one above
        the engine's limit), else the settings' own, capped by the engine's limit. Settings that keep the
        checkpoint's limit name none: on random weights the limit is then the text's `spoken_frames`."""
        base = request.sampling or self.model.sampling_defaults
        if request.max_new_tokens is not None:
            return dataclasses.replace(base, max_new_tokens=request.max_new_tokens)
        limit = min(base.max_new_tokens, self.limits.max_new_tokens)
        if self.random_weights and base.max_new_tokens == self.model.sampling_defaults.max_new_tokens:
            limit = min(limit, spoken_frames(request.text))
        return dataclasses.replace(base, max_new_tokens=limit)

    def voice(self, request: SpeechRequest) -> VoicePrompt:
        """The request's voice: from the cache, or through the speaker encoder (and codec encoder for ICL)."""
        if request.ref_audio is None:
            raise RequestError("ref_audio", "voice cloning needs a reference clip")
        icl = not request.x_vector_only
        if icl and not (request.ref_text and request.ref_text.strip()):
            raise RequestError(
                "ref_text", "ICL voice cloning needs the transcript of the reference clip (or set x_vector_only_mode)"
            )
        voice = self.encode(request.ref_audio, icl)
        return VoicePrompt(voice.x_vector, voice.ref_codes, request.ref_text)

    def encode(self, audio: bytes | tuple[np.ndarray, int], icl: bool = True) -> VoicePrompt:
        """A clip's voice without its transcript: from the cache, or through the encoders and into the cache."""
        if self.task is not Task.VOICE_CLONE:
            raise RequestError("ref_audio", f"the loaded checkpoint serves '{self.task}', not voice cloning")
        clip = self._clip(audio)
        key = (hashlib.blake2b(clip.samples.tobytes(), digest_size=16).hexdigest(), icl)
        voice = self.voices.get(key)
        if voice is None:
            voice = self.model.encode_voice(clip, icl)
            self.voices.put(key, voice)
            if icl:  # the x-vector alone comes with it, should the clip be cloned x-vector only
                self.voices.put((key[0], False), VoicePrompt(voice.x_vector))
        return voice

    def _clip(self, audio: bytes | tuple[np.ndarray, int]) -> ReferenceAudio:
        try:
            if isinstance(audio, (bytes, bytearray, memoryview)):
                return load_reference_audio(bytes(audio), max_seconds=self.limits.max_ref_seconds)
            samples, rate = audio
            return prepare_reference_audio(np.asarray(samples), rate, max_seconds=self.limits.max_ref_seconds)
        except (ValueError, TypeError) as exc:
            raise RequestError("ref_audio", str(exc).removeprefix("reference audio ")) from exc


def _check_text(name: str, value: object, limit: int) -> None:
    if not isinstance(value, str):
        raise RequestError(name, "must be text")
    if len(value) > limit:  # before anything reads it all
        raise RequestError(name, f"has {len(value)} characters; the limit is {limit}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise RequestError(name, f"is not valid Unicode (a lone surrogate at character {exc.start})") from None


def _check_whole(name: str, value: object, low: int, high: int, high_is: str = "") -> None:
    if value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool):
        raise RequestError(name, "must be a whole number")
    if value < low:
        raise RequestError(name, f"must be at least {low}, got {value}")
    if value > high:
        raise RequestError(name, f"must be at most {high}{f' ({high_is})' if high_is else ''}, got {value}")


def _is_waveform(audio: object) -> bool:
    return isinstance(audio, tuple) and len(audio) == 2 and isinstance(audio[1], (int, np.integer))
