"""Start and stop a real vLLM teacher server (CPU build, its own venv) for the tests that need one."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]


def vllm_python() -> Path | None:
    """The vLLM environment's python (DGR2_VLLM_PYTHON, else <repo>/.venv-vllm/bin/python), if it exists."""
    path = Path(os.environ.get("DGR2_VLLM_PYTHON", ROOT / ".venv-vllm" / "bin" / "python"))
    return path if path.exists() else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class VLLMServer:
    """`scripts/start_teacher_server.sh MODEL PORT` as a subprocess in its own process group (vLLM forks an engine
    and a worker), so `stop()` ends all of it."""

    def __init__(self, model_dir: Path, log_path: Path, startup_timeout: float = 300.0):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        env = dict(os.environ, DGR2_VLLM_PYTHON=str(vllm_python()))
        self._log = open(log_path, "w")
        self.process = subprocess.Popen(
            ["bash", str(ROOT / "scripts" / "start_teacher_server.sh"), str(model_dir), str(self.port)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        self._wait(startup_timeout)

    def _wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the vLLM server exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/v1/models", timeout=5) as response:
                    json.loads(response.read())
                return
            except OSError:
                time.sleep(1.0)
        self.stop()
        raise RuntimeError(f"the vLLM server did not answer within {timeout:.0f}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        self._log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=30)
            except ProcessLookupError:
                pass
        self._log.close()
