"""The text tokenizer gives the official pipeline's ids, offline.

Expected ids come from the official `AutoProcessor.from_pretrained(dir, fix_mistral_regex=True)` (qwen-tts 0.1.1,
transformers 4.57.3) on a folder written by `write_tokenizer_files` next to the released 0.6B-Base config.json.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from engine.model.text_tokenizer import TextTokenizer
from engine.model.vocab import write_tokenizer_files

RELEASED_SHA256 = {
    "vocab.json": "ca10d7e9fb3ed18575dd1e277a2579c16d108e32f27439684afa0e10b1440910",
    "merges.txt": "599bab54075088774b1733fde865d5bd747cbcc7a547c5bc12610e874e26f5e3",
}

OFFICIAL_IDS = [
    ("Hello, world!", [9707, 11, 1879, 0]),
    ("你好，世界！", [108386, 3837, 99489, 6313]),
    ("こんにちは、世界！", [89015, 5373, 99489, 6313]),
    ("안녕하세요, 세계!", [126246, 144370, 91145, 11, 133196, 0]),
    ("Cafe\u0301 naïve Zürich", [34, 2577, 963, 94880, 586, 1863, 5186, 713]),  # NFC joins e + U+0301
    ("Call 555-1234 at 12:30.", [7220, 220, 20, 20, 20, 12, 16, 17, 18, 19, 518, 220, 16, 17, 25, 18, 15, 13]),
    # The fixed-Mistral regex splits at case changes; Qwen's own regex would give [44740, 30914, 594].
    ("iPhone McDonald's", [72, 6939, 4483, 18234, 594]),
    ("a <tts_pad> b<|im_end|>c", [64, 220, 151671, 293, 151645, 66]),
    ("", []),
    ("two  spaces\n\nnew line", [19789, 220, 12621, 271, 931, 1555]),
    ("robots 🤖!", [60115, 11162, 97, 244, 0]),
]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Writing the vocabulary costs ~1 s, so one folder serves the whole file.
    directory = tmp_path_factory.mktemp("checkpoint")
    write_tokenizer_files(directory)
    return directory


@pytest.fixture(scope="module")
def tokenizer(checkpoint: Path) -> TextTokenizer:
    return TextTokenizer.from_checkpoint(checkpoint)


def test_written_vocabulary_is_the_released_one(checkpoint: Path) -> None:
    for name, sha256 in RELEASED_SHA256.items():
        assert hashlib.sha256((checkpoint / name).read_bytes()).hexdigest() == sha256, name


@pytest.mark.parametrize(("text", "ids"), OFFICIAL_IDS)
def test_encode_matches_official(tokenizer: TextTokenizer, text: str, ids: list[int]) -> None:
    assert tokenizer.encode(text) == ids


def test_special_token_ids(tokenizer: TextTokenizer) -> None:
    assert tokenizer.token_id("<|endoftext|>") == 151643
    assert tokenizer.token_id("<|im_start|>") == 151644
    assert tokenizer.token_id("<tts_pad>") == 151671
    assert tokenizer.token_id("<tts_text_bos>") == 151672
    assert tokenizer.token_id("<tts_text_eod>") == 151673
    assert tokenizer.token_id("<|audio_pad|>") == 151675
    assert tokenizer.token_id("assistant") == 77091


def test_prompt_layouts(tokenizer: TextTokenizer) -> None:
    assistant = tokenizer.assistant_text_ids("Hello there.")
    assert assistant.dtype == torch.int64 and assistant.dim() == 1
    # <|im_start|> assistant \n | text | <|im_end|> \n <|im_start|> assistant \n
    assert assistant.tolist() == [151644, 77091, 198, 9707, 1052, 13, 151645, 198, 151644, 77091, 198]
    ref = tokenizer.ref_text_ids("This is the reference.")
    assert ref.tolist() == [151644, 77091, 198, 1986, 374, 279, 5785, 13, 151645, 198]
    instruct = tokenizer.instruct_ids("Speak softly.")
    assert instruct.tolist() == [151644, 872, 198, 95845, 56050, 13, 151645, 198]


def test_folder_without_vocabulary_falls_back_to_the_package(tokenizer: TextTokenizer, tmp_path: Path) -> None:
    offline = TextTokenizer.from_checkpoint(tmp_path)
    for text, ids in OFFICIAL_IDS:
        assert offline.encode(text) == ids
    assert offline.token_id("<tts_text_eod>") == 151673


def test_decode_round_trips(tokenizer: TextTokenizer) -> None:
    text = "Zürich 你好 <tts_pad> 🤖"
    assert tokenizer.decode(tokenizer.encode(text)) == text


if __name__ == "__main__":
    raise SystemExit(pytest.main([__file__, "-q"]))
