"""Which remote speech servers a page may name: the operator's list, matched by server (scheme, host, port)."""

from __future__ import annotations

import pytest

from ui.remotes import ANY, RemoteServers


def test_a_listed_server_is_allowed_at_any_path_and_no_other() -> None:
    remotes = RemoteServers(("http://tts.internal:8000",))
    assert remotes.check(" http://TTS.internal:8000/v1 ") == "http://TTS.internal:8000/v1"
    for other in ("http://tts.internal:8001", "https://tts.internal:8000", "http://169.254.169.254"):
        with pytest.raises(ValueError, match="may reach only http://tts.internal:8000"):
            remotes.check(other)


def test_default_ports_are_the_same_server() -> None:
    assert RemoteServers(("https://tts.example.com",)).check("https://tts.example.com:443") == (
        "https://tts.example.com:443"
    )


def test_none_listed_is_off_and_any_is_any() -> None:
    with pytest.raises(ValueError, match="remote servers are off"):
        RemoteServers().check("http://127.0.0.1:8000")
    assert RemoteServers((ANY,)).check("http://10.0.0.7:9000") == "http://10.0.0.7:9000"
    with pytest.raises(ValueError, match="starts with http"):  # still a server URL, whatever the list
        RemoteServers((ANY,)).check("file:///etc/passwd")


def test_a_bad_entry_is_refused_when_the_list_is_made() -> None:
    with pytest.raises(ValueError, match="starts with http"):
        RemoteServers(("tts.internal:8000",))
