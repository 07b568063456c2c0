"""The engine's process seen from fastervlm: start it, ask it, wait for it while watching that it lives, stop it.

Its output goes to a log file (vLLM logs a lot); an error shows the log's last lines. The process gets a
private folder holding its Unix socket and a link to this fastervlm package, which is all of fastervlm that it
imports (`vllm_worker`, `vllm_models`, `vllm_names`): nothing of this environment's site-packages leaks into
vLLM's.
"""

from __future__ import annotations

import os
import secrets
import signal
import shutil
import subprocess
import tempfile
import time
import weakref
from collections.abc import Callable
from multiprocessing.connection import Client, Connection
from pathlib import Path
from typing import Any

from fastervlm.backends.vllm_worker import AUTHKEY_ENV, receive, send
from fastervlm.errors import FasterVLMError

CONNECT_SECONDS = 60.0
"""How long the process may take to open its socket (it imports only the standard library first)."""
LOG_LINES = 25


class VLLMError(FasterVLMError):
    """vLLM missing, refusing a setting, or failing to start or answer; `kind` says which (install, settings,
    device, engine, request, died)."""

    def __init__(self, message: str, kind: str = "install") -> None:
        super().__init__(message)
        self.kind = kind


class EngineProcess:
    """`python -m fastervlm.backends.vllm_worker` in `python`, connected over a Unix socket."""

    def __init__(self, python: str, log_file: Path, env: dict[str, str] | None = None) -> None:
        import fastervlm

        self.log_file = log_file
        self.folder = Path(tempfile.mkdtemp(prefix="fastervlm-vllm-"))
        os.symlink(Path(fastervlm.__file__).parent, self.folder / "fastervlm")
        authkey = secrets.token_bytes(16)
        socket = str(self.folder / "engine.sock")
        child_env = {**os.environ, **(env or {}), AUTHKEY_ENV: authkey.hex(), "PYTHONPATH": str(self.folder)}
        log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(log_file, "wb") as log:
            self.process = subprocess.Popen([python, "-m", "fastervlm.backends.vllm_worker", socket], env=child_env,
                                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        self._finalizer = weakref.finalize(self, _stop, self.process, self.folder)
        self.connection = self._connect(socket, authkey)

    def _connect(self, socket: str, authkey: bytes) -> Connection:
        deadline = time.monotonic() + CONNECT_SECONDS
        while True:
            self._check_alive()
            try:
                return Client(socket, family="AF_UNIX", authkey=authkey)
            except (FileNotFoundError, ConnectionRefusedError):
                if time.monotonic() > deadline:
                    self.close()
                    raise VLLMError(f"the vLLM engine's process did not start in {CONNECT_SECONDS:.0f} s."
                                             f"{self.log_tail()}", "died") from None
                time.sleep(0.1)

    def ask(self, message: dict[str, Any], waiting: Callable[[], None] | None = None) -> dict[str, Any]:
        """Send a request and wait for its answer, checking every second that the process lives (`waiting` is
        called then, e.g. to show progress); the answer's error, if any, is raised."""
        try:
            send(self.connection, message)
            while not self.connection.poll(1.0):
                self._check_alive()
                if waiting is not None:
                    waiting()
            answer = receive(self.connection)
        except (EOFError, OSError):
            self._check_alive()
            raise VLLMError(f"lost the connection to the vLLM engine.{self.log_tail()}", "died") from None
        if "error" in answer:
            tail = self.log_tail() if answer["kind"] == "engine" else ""
            raise VLLMError(f"{answer['error']}{tail}", answer["kind"])
        return answer

    def _check_alive(self) -> None:
        code = self.process.poll()
        if code is not None:
            self.close()
            raise VLLMError(f"the vLLM engine's process ended (exit code {code}).{self.log_tail()}", "died")

    def log_tail(self) -> str:
        """The log's last lines, for an error message."""
        try:
            lines = self.log_file.read_text(errors="replace").splitlines()[-LOG_LINES:]
        except OSError:
            return ""
        return f"\nLast lines of {self.log_file}:\n" + "\n".join(lines) if lines else ""

    def close(self) -> None:
        """Ask the process to finish (vLLM shuts its engine down), then make sure it has."""
        if self.process.poll() is None and getattr(self, "connection", None) is not None:
            try:
                send(self.connection, {"close": True})
                self.process.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self._finalizer()


def _stop(process: subprocess.Popen, folder: Path) -> None:
    """End the process and what vLLM started under it (its session: engine core, workers); remove its folder."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except (ProcessLookupError, PermissionError):
            break
        try:
            process.wait(timeout=15)
            break
        except subprocess.TimeoutExpired:
            continue
    shutil.rmtree(folder, ignore_errors=True)
