"""`bilevel ...` on a real pseudo-terminal of a given size, read as a person reads it:
each chunk of output is fed to a terminal emulator (pyte) and the screen is kept as a
frame, so a test can assert what was on the screen *while* the command ran, not only at
its end."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pyte

Screen = list[str]
SETTLE_SECONDS = 0.03  # output that pauses this long ends a frame


@dataclass
class Frame:
    at: float  # seconds since the command started
    screen: Screen


@dataclass
class PtySession:
    """One command on a COLUMNS x LINES pty; `frames` grows as it draws."""

    args: tuple[str, ...]
    columns: int = 80
    lines: int = 24
    frames: list[Frame] = field(default_factory=list)

    def __post_init__(self) -> None:
        parent, child = pty.openpty()
        fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", self.lines, self.columns,
                                                           0, 0))
        env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": str(self.columns),
               "LINES": str(self.lines)}
        env.pop("NO_COLOR", None)
        self._started = time.monotonic()
        self.proc = subprocess.Popen([sys.executable, "-m", "controller.cli", *self.args],
                                     stdin=child, stdout=child, stderr=child, env=env,
                                     close_fds=True)
        os.close(child)
        self._parent = parent
        self._screen = pyte.Screen(self.columns, self.lines)
        self._stream = pyte.ByteStream(self._screen)
        self._open = True

    def _read(self, wait: float) -> bool:
        """Feed what the command wrote within `wait` seconds; False once it closed."""
        if not self._open:
            return False
        ready, _, _ = select.select([self._parent], [], [], wait)
        if not ready:
            return self.proc.poll() is None
        data = self._chunk()
        # A redraw larger than the pty's buffer arrives in pieces: read on until the
        # output pauses, so a frame is a whole redraw, as a person sees it.
        while data and select.select([self._parent], [], [], SETTLE_SECONDS)[0]:
            more = self._chunk()
            if not more:
                break
            data += more
        if not data:
            self._open = False
            return False
        self._stream.feed(data)
        self.frames.append(Frame(time.monotonic() - self._started, self.screen()))
        return True

    def _chunk(self) -> bytes:
        try:
            return os.read(self._parent, 65536)
        except OSError:  # EIO: the child side closed
            return b""

    def screen(self) -> Screen:
        return [line.rstrip() for line in self._screen.display]

    def wait_for(self, shown: Callable[[Screen], bool], timeout: float = 120) -> Screen:
        """Read until `shown(screen)` holds; the screen then (AssertionError if never)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if shown(self.screen()):
                return self.screen()
            if not self._read(0.2) and not shown(self.screen()):
                break
        raise AssertionError("never shown:\n" + "\n".join(self.screen()))

    def interrupt(self) -> None:
        """Ctrl-C: SIGINT to the command."""
        self.proc.send_signal(signal.SIGINT)

    def finish(self, timeout: float = 240) -> tuple[int, Screen]:
        """Read to the end; the exit status and the last screen."""
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline and self._read(0.5):
                pass
            code = self.proc.wait(timeout=max(deadline - time.monotonic(), 5))
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            os.close(self._parent)
        return code, self.screen()
