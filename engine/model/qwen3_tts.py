"""`Qwen3TTS`: a loaded checkpoint with the calls of the official package, as plain functions of our modules.

This is the model's reference path: one request at a time, the whole waveform at the end. The serving engine reuses
the same pieces (prompt building, the step functions of `engine.model.generate`, the Code2Wav state) to stream and
batch.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from engine.model.audio import ReferenceAudio
from engine.model.codec import SpeechTokenizer
from engine.model.config import Qwen3TTSConfig
from engine.model.generate import generate_codes
from engine.model.loading import CheckpointFiles, Qwen3TTSNetwork, find_checkpoint, load_network, load_speech_tokenizer
from engine.model.prompt import (
    TalkerPrompt,
    build_task_prompt,
    check_language,
    check_text,
    icl_trim_start,
    languages_of,
    speakers_of,
)
from engine.model.sampling import SamplingParams
from engine.model.speaker_encoder import extract_xvector
from engine.model.text_tokenizer import TextTokenizer


@dataclass
class VoicePrompt:
    """A cloned voice: the x-vector, plus the reference codes and transcript in ICL mode (None: x-vector only)."""

    x_vector: Tensor  # (H,)
    ref_codes: Tensor | None = None  # (frames, 16) int64
    ref_text: str | None = None

    @property
    def icl(self) -> bool:
        return self.ref_codes is not None


@dataclass
class SynthesisInput:
    """One request to the model, for the task its checkpoint serves: a Base checkpoint clones `voice`, a CustomVoice
    one speaks as `speaker` (with `instruct`), a VoiceDesign one as `instruct` describes. `non_streaming_mode` None
    takes the official default of the task (streaming text for voice clone, non-streaming for the others)."""

    text: str
    language: str = "auto"
    speaker: str | None = None
    instruct: str | None = None
    voice: VoicePrompt | None = None
    non_streaming_mode: bool | None = None


@dataclass
class SynthesisResult:
    wav: np.ndarray  # (samples,) float32
    codes: Tensor  # (frames, 16) int64, the generated frames only
    sample_rate: int
    seed: int | None


class Qwen3TTS:
    def __init__(
        self,
        files: CheckpointFiles,
        network: Qwen3TTSNetwork,
        speech_tokenizer: SpeechTokenizer,
        text_tokenizer: TextTokenizer,
    ) -> None:
        self.files = files
        self.config: Qwen3TTSConfig = files.config
        self.network = network
        self.talker = network.talker
        self.speech_tokenizer = speech_tokenizer
        self.text_tokenizer = text_tokenizer
        known = {f.name for f in dataclasses.fields(SamplingParams)}
        self.sampling_defaults = SamplingParams(**{k: v for k, v in files.generation_config.items() if k in known})
        self.sample_rate = files.speech_tokenizer_config.output_sample_rate
        weight = network.talker.codec_head.weight
        self.device: torch.device = weight.device
        self.dtype: torch.dtype = weight.dtype
        self.released: set[str] = set()  # "talker", "decoder": parts whose weights `release` freed

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
    ) -> Qwen3TTS:
        """A checkpoint folder in the official layout, or a Hub id (downloaded when online)."""
        files = find_checkpoint(name_or_path)
        network = load_network(files, device, dtype)
        codec = load_speech_tokenizer(files, device, dtype)
        return cls(files, network, codec, TextTokenizer.from_checkpoint(files.root))

    def release(self, talker: bool = False, decoder: bool = False) -> None:
        """Free the weights of the talker and/or the codec decoder (moved to the meta device), in a process that
        prepares prompts while those parts run in stage workers of their own (which load their own copies): the
        speaker encoder, the codec encoder and the text tokenizer stay. Generating or decoding afterwards raises."""
        parts = {"talker": self.talker} if talker else {}
        if decoder:
            parts["decoder"] = self.speech_tokenizer.decoder
        for name, module in parts.items():
            module.to("meta")
            self.released.add(name)
        if parts and self.device.type == "cuda":
            torch.cuda.empty_cache()  # give the freed blocks back, for the workers on the same GPU

    def _require_base(self) -> None:
        if self.network.speaker_encoder is None:
            raise ValueError(f"voice cloning needs a Base checkpoint; this one is {self.config.tts_model_type!r}")

    def _require(self, part: str) -> None:
        if part in self.released:
            raise RuntimeError(f"this model's {part} weights were released (they run in a stage worker)")

    @property
    def model_type(self) -> str:
        """The checkpoint's `tts_model_type` ("base", "custom_voice", "voice_design"): the one task it serves."""
        return self.config.tts_model_type

    @property
    def languages(self) -> list[str]:
        return languages_of(self.config)

    @property
    def speakers(self) -> list[str]:
        return speakers_of(self.config)

    def create_voice_prompt(
        self, audio: ReferenceAudio, ref_text: str | None = None, x_vector_only: bool = False
    ) -> VoicePrompt:
        """x-vector (speaker encoder) and, for ICL, the reference codes (codec encoder) of a validated clip."""
        self._require_base()
        if not x_vector_only and not (ref_text and ref_text.strip()):
            raise ValueError(
                "ref_text: a transcript of the reference clip is required for ICL voice cloning "
                "(or ask for x-vector-only cloning)"
            )
        voice = self.encode_voice(audio, icl=not x_vector_only)
        return VoicePrompt(voice.x_vector, voice.ref_codes, None if x_vector_only else ref_text)

    @torch.inference_mode()
    def encode_voice(self, audio: ReferenceAudio, icl: bool = True) -> VoicePrompt:
        """The clip through the encoders, before any transcript is known: the x-vector, and the reference codes when
        `icl`; the transcript is added per request."""
        self._require_base()
        samples = torch.from_numpy(audio.samples)
        x_vector = extract_xvector(self.network.speaker_encoder, samples)
        if not icl:
            return VoicePrompt(x_vector)
        return VoicePrompt(x_vector, self.speech_tokenizer.encode(samples.to(self.device, self.dtype)))

    def build_prompt(self, request: SynthesisInput) -> TalkerPrompt:
        """Check the request against this checkpoint and lay out its talker prompt; a `PromptError` (a ValueError)
        names the field."""
        check_text(request.text)
        check_language(self.config, request.language)
        self._require("talker")  # its embeddings lay out the prompt
        tok, dev, voice = self.text_tokenizer, self.device, request.voice
        icl = voice is not None and voice.icl
        return build_task_prompt(
            self.talker,
            self.config,
            tok.assistant_text_ids(request.text)[None].to(dev),
            request.language,
            xvector=None if voice is None else voice.x_vector.to(dev, self.dtype),
            ref_ids=tok.ref_text_ids(voice.ref_text)[None].to(dev) if icl else None,
            ref_codes=voice.ref_codes.to(dev) if icl else None,
            speaker=request.speaker,
            instruct_ids=tok.instruct_ids(request.instruct)[None].to(dev) if request.instruct else None,
            non_streaming=request.non_streaming_mode,
        )

    def generate_codes(self, request: SynthesisInput, params: SamplingParams, seed: int | None = None) -> Tensor:
        """The generated code frames (frames, 16); `seed` makes sampling repeatable (as torch.manual_seed(seed)
        before the official call)."""
        prompt = self.build_prompt(request)
        generator = None if seed is None else torch.Generator(self.device).manual_seed(seed)
        return generate_codes(self.talker, prompt, params, generator)

    @torch.inference_mode()
    def decode(self, codes: Tensor, voice: VoicePrompt | None = None) -> np.ndarray:
        """24 kHz audio of the generated frames. For ICL the reference codes are decoded in front, as the official
        does, and their share of the samples is cut off."""
        self._require("decoder")
        if voice is None or not voice.icl:
            return self.speech_tokenizer.decode(codes.to(self.device)).float().cpu().numpy()
        full = torch.cat([voice.ref_codes.to(self.device), codes.to(self.device)])
        wav = self.speech_tokenizer.decode(full).float().cpu().numpy()
        return wav[icl_trim_start(voice.ref_codes.shape[0], full.shape[0], wav.shape[0]) :]

    def synthesize(
        self, request: SynthesisInput, params: SamplingParams | None = None, seed: int | None = None
    ) -> SynthesisResult:
        """Codes and waveform of one request. Sampling without a seed picks one and reports it, so any run can be
        repeated."""
        params = params or self.sampling_defaults
        if seed is None and (params.do_sample or params.subtalker_dosample):
            seed = random.randrange(2**31)
        codes = self.generate_codes(request, params, seed)
        return SynthesisResult(self.decode(codes, request.voice), codes.cpu(), self.sample_rate, seed)
