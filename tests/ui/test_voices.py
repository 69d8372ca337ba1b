"""The saved-voice library on its own: a folder on disk, bounded, shared by every visitor."""

from __future__ import annotations

from pathlib import Path

import pytest

from ui.views.workload import demo_clip
from ui.voices import SavedVoice, VoiceError, VoiceLibrary, VoiceLimits

CLIP = demo_clip(1.0)


def test_a_saved_voice_outlives_the_library_that_saved_it(tmp_path: Path) -> None:
    VoiceLibrary(tmp_path).save(SavedVoice("Ana (calm)", CLIP, "What I said.", False))
    VoiceLibrary(tmp_path).save(SavedVoice("Bo", CLIP, None, True))
    reopened = VoiceLibrary(tmp_path)  # as after a restart of the app
    assert reopened.names() == ["Ana (calm)", "Bo"]  # oldest first
    assert reopened.get("Ana (calm)") == SavedVoice("Ana (calm)", CLIP, "What I said.", False)
    assert reopened.get("Bo") == SavedVoice("Bo", CLIP, None, True)
    assert reopened.get("Cy") is None


def test_stored_file_names_never_come_from_the_visitor(tmp_path: Path) -> None:
    library = VoiceLibrary(tmp_path)
    library.save(SavedVoice("my voice", CLIP, None, True))
    names = sorted(p.name for p in tmp_path.iterdir())
    assert len(names) == 2 and all("voice" not in n for n in names)
    assert {Path(n).suffix for n in names} == {".clip", ".json"}


@pytest.mark.parametrize("name", ["", "   ", "../etc", "a/b", "a\\b", ".hidden", "x" * 41, "tab\there", "(none)"])
def test_a_name_that_could_be_a_path_or_is_empty_is_refused(tmp_path: Path, name: str) -> None:
    library = VoiceLibrary(tmp_path)
    with pytest.raises(VoiceError):
        library.save(SavedVoice(name, CLIP, None, True))
    assert not any(tmp_path.iterdir())


def test_names_are_unique_and_nothing_is_replaced(tmp_path: Path) -> None:
    library = VoiceLibrary(tmp_path)
    library.save(SavedVoice("Ana", CLIP, "first", False))
    with pytest.raises(VoiceError, match="already saved"):
        library.save(SavedVoice(" Ana ", demo_clip(2.0), "second", False))
    assert library.get("Ana").ref_text == "first"


def test_saving_past_the_count_limit_is_refused_and_nothing_is_evicted(tmp_path: Path) -> None:
    library = VoiceLibrary(tmp_path, VoiceLimits(max_voices=2))
    library.save(SavedVoice("a", CLIP, None, True))
    library.save(SavedVoice("b", CLIP, None, True))
    with pytest.raises(VoiceError, match=r"full \(2 voices\)"):
        library.save(SavedVoice("c", CLIP, None, True))
    assert library.names() == ["a", "b"]
    library.delete("a")  # room again
    library.save(SavedVoice("c", CLIP, None, True))
    assert VoiceLibrary(tmp_path).names() == ["b", "c"]


def test_saving_past_the_byte_limit_is_refused(tmp_path: Path) -> None:
    library = VoiceLibrary(tmp_path, VoiceLimits(max_bytes=len(CLIP) + 10))
    library.save(SavedVoice("a", CLIP, None, True))
    with pytest.raises(VoiceError, match="does not fit"):
        library.save(SavedVoice("b", CLIP, None, True))
    assert library.used_bytes == len(CLIP)


def test_a_clip_that_is_not_audio_is_refused(tmp_path: Path) -> None:
    with pytest.raises(VoiceError, match="not a readable audio file"):
        VoiceLibrary(tmp_path).save(SavedVoice("notes", b"plain text", None, True))


def test_a_save_cut_short_leaves_no_voice(tmp_path: Path) -> None:
    library = VoiceLibrary(tmp_path)
    library.save(SavedVoice("kept", CLIP, None, True))
    (tmp_path / "0123456789abcdef.clip").write_bytes(CLIP)  # the clip landed, its JSON did not
    (tmp_path / "fedcba9876543210.json.tmp").write_text("{")
    assert VoiceLibrary(tmp_path).names() == ["kept"]
    assert len(list(tmp_path.iterdir())) == 2  # the leftovers are gone


def test_deleting_an_unknown_voice_says_so(tmp_path: Path) -> None:
    with pytest.raises(VoiceError, match="No saved voice"):
        VoiceLibrary(tmp_path).delete("ghost")


def test_a_voice_whose_clip_was_removed_behind_the_app_is_gone(tmp_path: Path) -> None:
    library = VoiceLibrary(tmp_path)
    assert library.save(SavedVoice(" Ana ", CLIP, None, True)) == "Ana"
    next(tmp_path.glob("*.clip")).unlink()
    assert library.get("Ana") is None and library.names() == []
