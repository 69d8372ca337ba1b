"""Messages into and out of the stages. Each is a dataclass of tensors and plain values; the runtime moves them
(in-process as they are, between processes with tensors in shared memory), the stages never see how.

Flow: engine -> talker: TalkerJob, Credit, Cancel; talker -> code2wav: CodeChunk (through the engine, or straight
when both run `mp`); engine -> code2wav: WarmPrefix, Cancel; code2wav -> engine: AudioOut; any stage -> engine: Failed.

`WIRE` is the one registry of what may cross a process boundary: every stage message here, the runtime's control
messages (`engine.runtime.control`) and the dataclasses they nest; `@wire` adds a class to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

from torch import Tensor

from engine.model.sampling import SamplingParams

T = TypeVar("T", bound=type)
WIRE: dict[str, type] = {}  # class name -> class: what the transport may encode and decode


def wire(cls: T) -> T:
    """Register a dataclass as a message the transport may carry (by its class name, which must be unique)."""
    if WIRE.setdefault(cls.__name__, cls) is not cls:
        raise TypeError(f"two wire messages are named {cls.__name__}")
    return cls


wire(SamplingParams)


@wire
@dataclass
class TalkerJob:
    """A validated request, tokenized and with its voice prepared; the talker stage lays out its prompt."""

    request_id: str
    text_ids: Tensor  # (n,) int64, `<|im_start|>assistant\n{text}<|im_end|>\n<|im_start|>assistant\n`
    language: str
    params: SamplingParams  # max_new_tokens already capped by the engine
    seed: int | None
    credits: int  # chunks it may emit before the engine grants more
    speaker: str | None = None
    instruct_ids: Tensor | None = None  # (n,) int64
    x_vector: Tensor | None = None  # (H,)
    ref_ids: Tensor | None = None  # (n,) int64, ICL only
    ref_codes: Tensor | None = None  # (frames, 16) int64, ICL only
    non_streaming: bool | None = None


@wire
@dataclass
class CodeChunk:
    """Frames of one request for Code2Wav. `codes` may be empty on the last chunk (the request ended on a boundary).
    `prefix_codes` rides on the first chunk of an ICL request: decoded to warm the decoder state, its audio dropped."""

    request_id: str
    index: int
    codes: Tensor  # (frames, 16) int64
    is_last: bool
    prefix_codes: Tensor | None = None


@wire
@dataclass
class WarmPrefix:
    """A voice's reference codes, sent ahead of any request that clones it: code2wav decodes them into its prefix
    cache, so the first such request skips that decode before its first audio. No answer comes back."""

    prefix_codes: Tensor  # (frames, 16) int64


@wire
@dataclass
class AudioOut:
    request_id: str
    index: int
    samples: Tensor  # (frames * 1920,) float32
    frames: int
    is_last: bool


@wire
@dataclass
class Credit:
    """The listener consumed chunks: the talker may emit `n` more for this request."""

    request_id: str
    n: int = 1


CANCELS_REMEMBERED = 4096  # a stage remembers this many cancelled ids, to drop their late chunks (and so an id may
# not be reused while it is remembered: its new chunks would be dropped too)


@wire
@dataclass
class Cancel:
    """Drop a request and free its slots (a closed stream, an engine shutting down)."""

    request_id: str


@wire
@dataclass
class Failed:
    """A request a stage could not serve; the engine ends its stream with an error carrying `message`."""

    request_id: str
    message: str


StageInput = TalkerJob | CodeChunk | Credit | Cancel | WarmPrefix
StageOutput = CodeChunk | AudioOut | Failed
