"""Prompt prep at the engine's edge: validate a request against the loaded checkpoint, tokenize it, and prepare its
voice, so that the talker stage receives a `TalkerJob` it can lay out without further checks.

The voice (x-vector, and the reference codes for ICL) is cached by the content of the decoded 24 kHz clip, bounded in
bytes, so a second request with the same clip skips the speaker encoder and the codec encoder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
import threading
from collections import OrderedDict

import numpy as np

from engine.config import LimitsConfig
from engine.model.audio import ReferenceAudio, load_reference_audio, prepare_reference_audio
from engine.model.qwen3_tts import Qwen3TTS, VoicePrompt
from engine.model.sampling import SamplingParams
from engine.request import TASKS, RequestError, SpeechRequest, check_request
from engine.stages.messages import TalkerJob


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
    def __init__(self, model: Qwen3TTS, limits: LimitsConfig, voice_cache_bytes: int) -> None:
        self.model = model
        self.limits = limits
        self.voices = VoiceCache(voice_cache_bytes)

    def prepare(self, request: SpeechRequest) -> TalkerJob:
        """The request as a talker job, or a `RequestError` naming the first bad field."""
        model, limits = self.model, self.limits
        check_request(request, limits)
        task = request.task or model.task
        if task not in TASKS:
            raise RequestError("task", f"{task!r} is not one of {', '.join(TASKS)}")
        if task != model.task:
            raise RequestError("task", f"the loaded checkpoint serves {model.task!r}, not {task!r}")
        text = request.text.strip()
        if not text:
            raise RequestError("input", "the text is empty")
        if request.language.lower() not in model.languages:
            raise RequestError("language", f"{request.language!r} is not one of {', '.join(model.languages)}")
        if task == "custom_voice" and (not request.speaker or request.speaker.lower() not in model.speakers):
            raise RequestError("voice", f"speaker {request.speaker!r} is not one of {', '.join(model.speakers)}")
        if task != "voice_clone" and request.ref_audio is not None:
            raise RequestError("ref_audio", f"only voice_clone uses a reference clip, not {task}")
        params = self._sampling(request)
        seed = request.seed
        if seed is None and (params.do_sample or params.subtalker_dosample):
            seed = random.randrange(2**31)  # reported on every chunk, so the run can be repeated
        tok = model.text_tokenizer
        job = TalkerJob(
            request_id=request.request_id,
            text_ids=tok.assistant_text_ids(text),
            language=request.language,
            params=params,
            seed=seed,
            credits=limits.credits,
            non_streaming=request.non_streaming_mode,
        )
        if task == "custom_voice":
            job.speaker = request.speaker
        if request.instruct and task != "voice_clone":
            job.instruct_ids = tok.instruct_ids(request.instruct)
        if task == "voice_clone":
            voice = self.voice(request)
            job.x_vector = voice.x_vector
            if voice.icl:
                job.ref_codes = voice.ref_codes
                job.ref_ids = tok.ref_text_ids(request.ref_text.strip())
        return job

    def _sampling(self, request: SpeechRequest) -> SamplingParams:
        """The request's settings with its frame limit: `max_new_tokens` as asked (`check_request` refused one above
        the engine's limit), else the settings' own, capped by the engine's limit."""
        base = request.sampling or self.model.sampling_defaults
        limit = request.max_new_tokens or min(base.max_new_tokens, self.limits.max_new_tokens)
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
        if self.model.task != "voice_clone":
            raise RequestError("ref_audio", f"the loaded checkpoint serves {self.model.task!r}, not voice cloning")
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
