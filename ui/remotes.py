"""Which remote speech servers a page may name (Compare's sides, Benchmark's URL). A page that could name any URL would
make this server send requests wherever its visitor likes, inside the operator's network too (server-side request
forgery), so the list is the operator's: `--remote-servers`. An app that answers only loopback names (the default)
has only local visitors, who could reach those servers themselves: any is allowed there unless the list says
otherwise."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from profiling.speech_client import check_server_url

ANY = "*"


def origin(url: str) -> tuple[str, str, int]:
    """Scheme, host and port (the default port filled in): two URLs of one server compare equal."""
    parts = urlsplit(url)
    return parts.scheme, (parts.hostname or "").lower(), parts.port or (443 if parts.scheme == "https" else 80)


@dataclass(frozen=True)
class RemoteServers:
    """The allowed servers, by URL (any path on the server), or `ANY`; none: remote servers are off."""

    allowed: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for url in self.allowed:
            if url != ANY:
                check_server_url(url)  # a bad entry is the operator's error, said at start-up

    def check(self, text: str) -> str:
        """`text` as a server URL this app may reach; a ValueError says why not, in words a page can show."""
        url = check_server_url(text)
        if ANY in self.allowed or origin(url) in {origin(a) for a in self.allowed}:
            return url
        if not self.allowed:
            raise ValueError("remote servers are off on this app (its operator allows them with --remote-servers)")
        raise ValueError(f"this app may reach only {', '.join(self.allowed)} (--remote-servers)")

    def describe(self) -> str:
        """For the URL fields' labels."""
        if ANY in self.allowed:
            return "any server"
        return ", ".join(self.allowed) if self.allowed else "off (--remote-servers)"
