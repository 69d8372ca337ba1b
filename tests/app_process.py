"""`python app.py ...` as a subprocess, as a user starts it: its stderr is read line by line by a thread, so a test
waits on the line that says something happened (the port bound, the process gone) rather than on a duration."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
from pathlib import Path
from types import TracebackType

import psutil

ROOT = Path(__file__).resolve().parents[1]
SERVING = re.compile(r"Uvicorn running on (http://\S+)")


class AppProcess:
    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "app.py", *args], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._eof = False
        threading.Thread(target=self._read, daemon=True).start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def stderr(self) -> str:
        with self._changed:
            return "".join(self.lines)

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self._eof = True
            self._changed.notify_all()

    def wait_for(self, pattern: re.Pattern[str], timeout: float) -> re.Match[str]:
        """The first stderr line matching `pattern`; fails when the process ends or `timeout` passes without one."""

        def found() -> re.Match[str] | bool | None:
            return next(filter(None, map(pattern.search, self.lines)), None) or self._eof

        with self._changed:
            match = self._changed.wait_for(found, timeout)
        assert isinstance(match, re.Match), f"no line matching {pattern.pattern!r}:\n{self.stderr}"
        return match

    def serving_url(self, timeout: float = 180.0) -> str:
        """The URL once uvicorn has bound its port (the app is started with `--port 0`: any free port)."""
        return self.wait_for(SERVING, timeout)[1]

    def wait_exit(self, timeout: float) -> int:
        """The exit status, once the process has ended and its stderr has been read to the end."""
        code = self.proc.wait(timeout)
        with self._changed:
            assert self._changed.wait_for(lambda: self._eof, timeout), "stderr was not closed"
        return code

    def __enter__(self) -> AppProcess:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        """A process still running (a failed test) is killed with its workers."""
        if self.proc.poll() is None:
            for child in psutil.Process(self.pid).children(recursive=True):
                child.kill()
            self.proc.kill()
        self.proc.wait(30)
