"""Starting the real service with uvicorn on 127.0.0.1 for tests."""

from __future__ import annotations

import os
import shutil
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
        self.stop()  # not left running behind the failed test
        raise TimeoutError(f"server did not become ready in {timeout:g} s; see {self.log.name}")

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


class RedisServer:
    """Debian's redis-server on 127.0.0.1, no persistence; stop() and start() again on the same port."""

    def __init__(self, log_path: Path, port: int | None = None):
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    def start(self) -> RedisServer:
        args = ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no"]
        self.proc = subprocess.Popen(args, stdout=open(self.log_path, "ab"), stderr=subprocess.STDOUT)  # noqa: SIM115
        if not wait_for(self._answers, 10):
            raise RuntimeError(f"redis-server did not start; see {self.log_path}")
        return self

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


class Router:
    """Debian's HAProxy with the shipped configuration (deploy/haproxy/) in front of two replicas."""

    def __init__(self, replicas: list[str], log_path: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        folder = ROOT / "deploy" / "haproxy"
        env = {
            **os.environ,
            "AVCHAT_ROUTER_PORT": str(self.port),
            "AVCHAT_HAPROXY_DIR": str(folder),
            **{f"AVCHAT_REPLICA_{i}": r for i, r in enumerate(replicas)},
        }
        haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
        self.log = open(log_path, "wb")  # noqa: SIM115 - closed by stop()
        self.proc = subprocess.Popen(
            [haproxy, "-W", "-db", "-f", str(folder / "haproxy.cfg")],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = 30) -> Router:
        def up() -> bool:
            try:
                return httpx.get(self.url + "/ready", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        if not wait_for(up, timeout, 0.2):
            raise RuntimeError(f"the router did not come up; see {self.log.name}")
        return self

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()
