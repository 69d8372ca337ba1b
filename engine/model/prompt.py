"""The talker prompt of every task, built from token ids in the official layout.

Expected id layouts (1, n) int64, as the facade tokenizes them:
  text_ids     `<|im_start|>assistant\\n{text}<|im_end|>\\n<|im_start|>assistant\\n`  role = [:3], body = [3:-5]
  ref_ids      `<|im_start|>assistant\\n{ref_text}<|im_end|>\\n`                     body = [3:-2]
  instruct_ids `<|im_start|>user\\n{instruct}<|im_end|>\\n`                           used whole
ref_codes: (T, 16) int64 codes of the reference audio; xvector: (H,) speaker embedding.

Notation: P(x) = text_projection(text_embedding(x)), C(x) = codec_embedding(x). Prefill =
[P(instruct)] + P(role) + (tts_pad × (m-2), tts_bos) + C(codec prefix)[:-1] + the task tail, where the codec prefix is
(nothink, think_bos, think_eos) for language "auto" else (think, think_bos, lang, think_eos), then the speaker slot
(C(spk_id) or the x-vector), then (pad, bos). Projections are taken over the same id groups as the official code,
because CPU GEMMs round differently with the row count.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from engine.model.config import Qwen3TTSConfig
from engine.model.talker import Talker


@dataclass
class TalkerPrompt:
    """embeds: prefill (1, L, H); trailing: (T, H) rows added to the inputs of decode steps 0..T-1; tts_pad: (H,)
    added to every later step."""

    embeds: Tensor
    trailing: Tensor
    tts_pad: Tensor


def _ids(values: list[int], like: Tensor) -> Tensor:
    return torch.tensor([values], dtype=like.dtype, device=like.device)


class PromptError(ValueError):
    """An input this checkpoint cannot lay out; `field` names it as `SynthesisInput` does (text, language, speaker,
    voice)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message


def languages_of(cfg: Qwen3TTSConfig) -> list[str]:
    """What a request's language may be: auto plus the checkpoint's languages (dialects come with their speakers)."""
    return ["auto"] + [k for k in cfg.talker_config.codec_language_id if "dialect" not in k]


def speakers_of(cfg: Qwen3TTSConfig) -> list[str]:
    """The built-in speakers of a CustomVoice checkpoint (none for the others)."""
    return sorted(cfg.talker_config.spk_id)


def check_text(text: str) -> None:
    if not text.strip():
        raise PromptError("text", "the text is empty")


def check_language(cfg: Qwen3TTSConfig, language: str) -> None:
    if language.lower() not in languages_of(cfg):
        raise PromptError("language", f"{language!r} is not one of {', '.join(languages_of(cfg))}")


def check_speaker(cfg: Qwen3TTSConfig, speaker: str | None) -> None:
    if not speaker or speaker.lower() not in cfg.talker_config.spk_id:
        raise PromptError("speaker", f"{speaker!r} is not one of {', '.join(speakers_of(cfg))}")


def _language_id(cfg: Qwen3TTSConfig, language: str, speaker: str | None) -> int | None:
    tc, lang = cfg.talker_config, language.lower()
    if lang != "auto" and lang not in tc.codec_language_id:
        raise PromptError("language", f"{language!r} is not supported (known: auto, {', '.join(tc.codec_language_id)})")
    lang_id = None if lang == "auto" else tc.codec_language_id[lang]
    dialect = tc.spk_is_dialect.get(speaker.lower(), False) if speaker else False
    if lang in ("chinese", "auto") and dialect:
        lang_id = tc.codec_language_id[dialect]
    return lang_id


@torch.inference_mode()
def build_prompt(
    talker: Talker,
    cfg: Qwen3TTSConfig,
    text_ids: Tensor,
    language: str = "auto",
    *,
    speaker: str | None = None,
    xvector: Tensor | None = None,
    instruct_ids: Tensor | None = None,
    ref_ids: Tensor | None = None,
    ref_codes: Tensor | None = None,
    non_streaming: bool = False,
) -> TalkerPrompt:
    """The general builder; `build_task_prompt` picks its arguments. ICL when ref_ids and ref_codes are given."""
    tc = cfg.talker_config
    if speaker is not None:
        check_speaker(cfg, speaker)
    P, C = talker.embed_text, talker.embed_codec
    lang_id = _language_id(cfg, language, speaker)

    tts_bos, tts_eos, tts_pad = P(
        _ids([cfg.tts_bos_token_id, cfg.tts_eos_token_id, cfg.tts_pad_token_id], text_ids)
    ).chunk(3, dim=1)
    if lang_id is None:
        prefix = [tc.codec_nothink_id, tc.codec_think_bos_id, tc.codec_think_eos_id]
    else:
        prefix = [tc.codec_think_id, tc.codec_think_bos_id, lang_id, tc.codec_think_eos_id]
    codec = [C(_ids(prefix, text_ids))]
    if speaker is not None:
        codec.append(C(torch.tensor(tc.spk_id[speaker.lower()], device=text_ids.device)).view(1, 1, -1))
    elif xvector is not None:
        codec.append(xvector.to(tts_pad.dtype).view(1, 1, -1))
    codec.append(C(_ids([tc.codec_pad_id, tc.codec_bos_id], text_ids)))
    codec = torch.cat(codec, dim=1)

    head = torch.cat((tts_pad.expand(-1, codec.shape[1] - 2, -1), tts_bos), dim=1) + codec[:, :-1]
    parts = [P(instruct_ids)] if instruct_ids is not None else []
    parts += [P(text_ids[:, :3]), head]
    body = text_ids[:, 3:-5]
    if ref_ids is not None and ref_codes is not None:
        tail, trailing = _icl_tail(talker, cfg, body, ref_ids[:, 3:-2], ref_codes, tts_pad, tts_eos, non_streaming)
        parts.append(tail)
    elif non_streaming:
        text = torch.cat((P(body), tts_eos), dim=1) + C(_ids([tc.codec_pad_id] * (body.shape[1] + 1), text_ids))
        parts += [text, tts_pad + C(_ids([tc.codec_bos_id], text_ids))]
        trailing = tts_pad
    else:
        parts.append(P(text_ids[:, 3:4]) + codec[:, -1:])
        trailing = torch.cat((P(text_ids[:, 4:-5]), tts_eos), dim=1)
    return TalkerPrompt(torch.cat(parts, dim=1), trailing[0], tts_pad[0, 0])


def _icl_tail(
    talker: Talker,
    cfg: Qwen3TTSConfig,
    body: Tensor,
    ref_body: Tensor,
    ref_codes: Tensor,
    tts_pad: Tensor,
    tts_eos: Tensor,
    non_streaming: bool,
) -> tuple[Tensor, Tensor]:
    """In-context cloning: the reference text + target text, aligned with the reference codes' frame embeddings."""
    tc = cfg.talker_config
    text = torch.cat((talker.embed_text(torch.cat((ref_body, body), dim=-1)), tts_eos), dim=1)
    ref_codes = ref_codes.to(body.device)
    frames = [talker.embed_codec(ref_codes[:, :1])]
    frames += [emb(ref_codes[:, i + 1 : i + 2]) for i, emb in enumerate(talker.code_predictor.model.codec_embedding)]
    codec = torch.cat((talker.embed_codec(_ids([tc.codec_bos_id], body)), torch.cat(frames, dim=1).sum(1)[None]), dim=1)
    n_text, n_codec = text.shape[1], codec.shape[1]
    if non_streaming:
        text = text + talker.embed_codec(_ids([tc.codec_pad_id] * n_text, body))
        return torch.cat((text, codec + tts_pad), dim=1), tts_pad
    if n_text > n_codec:
        return text[:, :n_codec] + codec, text[:, n_codec:]
    text = torch.cat([text] + [tts_pad] * (n_codec - n_text), dim=1)
    return text + codec, tts_pad


def build_task_prompt(
    talker: Talker,
    cfg: Qwen3TTSConfig,
    text_ids: Tensor,
    language: str = "auto",
    *,
    xvector: Tensor | None = None,
    ref_ids: Tensor | None = None,
    ref_codes: Tensor | None = None,
    speaker: str | None = None,
    instruct_ids: Tensor | None = None,
    non_streaming: bool | None = None,
) -> TalkerPrompt:
    """The prompt of the checkpoint's task (its `tts_model_type`) in that task's official layout: Base clones the
    voice of `xvector` (in context when ref_ids and ref_codes come too), CustomVoice speaks as `speaker`, VoiceDesign
    as `instruct_ids` describe (None for an empty description); inputs the task does not take are not used, one it
    needs and lacks raises `PromptError`. `non_streaming` None is the official default: streaming text for Base, all
    text in the prefill for the others. The 0.6B CustomVoice takes no instruct: the official facade
    (`Qwen3TTSModel.generate_custom_voice`) drops it when tts_model_size is "0b6"; so do we."""
    kind = cfg.tts_model_type
    if kind == "base":
        if xvector is None:
            raise PromptError(
                "voice", "a Base checkpoint clones a voice: it needs its x_vector (the speaker embedding)"
            )
        if (ref_ids is None) != (ref_codes is None):
            raise PromptError("voice", "ICL cloning needs both ref_ids and ref_codes (or neither, for x-vector only)")
        speaker = instruct_ids = None
    else:
        xvector = ref_ids = ref_codes = None
        if kind != "custom_voice":
            speaker = None
        elif speaker is None:
            raise PromptError("speaker", "a CustomVoice checkpoint speaks as one of its speakers: name one")
        elif cfg.tts_model_size == "0b6":
            instruct_ids = None
    streaming_by_default = kind == "base"
    return build_prompt(
        talker,
        cfg,
        text_ids,
        language,
        speaker=speaker,
        xvector=xvector,
        instruct_ids=instruct_ids,
        ref_ids=ref_ids,
        ref_codes=ref_codes,
        non_streaming=not streaming_by_default if non_streaming is None else non_streaming,
    )


def icl_trim_start(ref_frames: int, total_frames: int, num_samples: int) -> int:
    """ICL output is decode(ref_codes ++ codes); the official facade cuts the first int(ref/total × N) samples.

    With N = total × samples_per_frame that is the reference's frame boundary, or one sample before it when the float
    rounding of ref / total falls short (about 4 % of (ref, total) pairs, in no simple pattern of the total): the
    product is within two roundings of the integer ref × samples_per_frame, so `int` can only lose that one sample."""
    return int(ref_frames / max(total_frames, 1) * num_samples)
