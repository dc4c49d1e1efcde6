"""Starting the real service with uvicorn on 127.0.0.1 for tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, env: dict[str, str], log_path: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(log_path, "wb")  # noqa: SIM115 - open while the server runs; stop() closes it
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(self.port)],
            cwd=ROOT,
            env={**os.environ, "AVCHAT_MODEL": "tiny", **env},
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.ready_statuses: list[int] = []

    def wait_ready(self, timeout: float = 180) -> Server:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}; see {self.log.name}")
            try:
                r = httpx.get(self.url + "/ready", timeout=2)
                self.ready_statuses.append(r.status_code)
                if r.status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError("server did not become ready")

    def stop(self, sig: int = signal.SIGINT, timeout: float = 30) -> int | None:
        """Stops the server; its exit status (None if it had to be killed)."""
        self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            code = None
        self.log.close()
        return code

    def log_text(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return Path(self.log.name).read_text(errors="replace")


def wait_for(condition, timeout: float = 10.0, every: float = 0.05):
    """Polls ``condition`` until it returns something truthy (returned) or the time is up (the
    last value is returned, for the caller's assertion to show)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(every)


def metric(url: str, name: str, labels: str = "", headers: dict | None = None) -> float:
    """The sum of a Prometheus metric's samples whose labels contain ``labels``."""
    total = 0.0
    for line in httpx.get(url + "/metrics", headers=headers or {}, timeout=10).text.splitlines():
        if line.startswith("#"):
            continue
        key = line.split(" ", 1)[0]
        if (key == name or key.startswith(name + "{")) and labels in key:
            total += float(line.rsplit(" ", 1)[1])
    return total
