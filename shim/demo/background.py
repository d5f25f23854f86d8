"""A ``shim`` command running in the background of the demo, its lines as they come."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading

__all__ = ["Background"]


class Background:
    """``python -m shim ARGS`` in a process of its own (stdout and stderr together);
    :meth:`said` hands over what it printed since the last call."""

    def __init__(self, args: list[str]) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "shim", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=os.environ | {"COLUMNS": "1000"},  # one line a line: the demo wraps them
        )
        self._lines: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read, name="shim-demo-bg", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            self._lines.put(line.rstrip("\n"))

    @property
    def running(self) -> bool:
        return self._proc.poll() is None

    def said(self) -> list[str]:
        """The lines printed since the last call."""
        lines = []
        while True:
            try:
                lines.append(self._lines.get_nowait())
            except queue.Empty:
                return lines

    def wait(self, timeout: float) -> int:
        """Its exit code, once it ends on its own within ``timeout`` seconds; else it
        is stopped (SIGTERM, then SIGKILL) and the code it ended with is returned."""
        try:
            self._proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._reader.join(timeout=10)
        assert self._proc.stdout is not None
        self._proc.stdout.close()
        return self._proc.returncode
