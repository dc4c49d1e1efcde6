"""Stops and deaths on both engines (real uvicorn, tiny model): SIGTERM ends what cannot finish
in the drain with an in-band error and ``[DONE]`` inside Docker's 10 s; a dead vLLM engine
makes the service unready and exit 3; SIGKILL of the service leaves no process behind, and the
next start sweeps what it left. Nothing here hopes the machine is fast or slow: the streams are
1900 tokens long (about 3 s here) against a 1 s drain."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil
import pytest

from tests.servers import Server, wait_for
from tests.test_service import _engines

LONG = {
    "messages": [{"role": "user", "content": "Tell me everything."}],
    "max_tokens": 1900,
    "ignore_eos": True,
    "temperature": 1.0,
    "seed": 3,
}
VLLM = pytest.mark.skipif("vllm" not in _engines(), reason="vLLM's CPU build is not installed")


@pytest.fixture
def short_tmp():
    """A TMPDIR with a short path: vLLM's socket paths must fit a Unix socket's 107 characters."""
    path = Path(tempfile.mkdtemp(prefix="avt-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _server(engine: str, tiny_home, tmp_path, name: str, system_temp: Path, **env) -> Server:
    srv = Server(
        {
            "TMPDIR": str(system_temp),
            "AVCHAT_HOME": str(tiny_home),
            "AVCHAT_ENGINE": engine,
            "VLLM_CPU_KVCACHE_SPACE": "1",
            **env,
        },
        tmp_path / f"{name}.log",
    )
    srv.system_temp = system_temp
    return srv.wait_ready(300)


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _gone(procs: list[psutil.Process]) -> bool:
    return all(not p.is_running() or p.status() == psutil.STATUS_ZOMBIE for p in procs)


@pytest.mark.parametrize("engine", _engines())
def test_sigterm_ends_a_stream_in_band_and_the_stop_fits_dockers_10_s(engine, tiny, tiny_home, tmp_path, short_tmp):
    srv = _server(engine, tiny_home, tmp_path, f"drain-{engine}", short_tmp, AVCHAT_DRAIN_TIMEOUT_S="1")
    children = _descendants(srv.proc.pid)
    with httpx.stream("POST", srv.url + "/v1/chat/completions", json={**LONG, "stream": True}, timeout=60) as resp:
        lines = resp.iter_lines()
        events = [next(lines)]
        srv.proc.send_signal(signal.SIGTERM)
        started = time.perf_counter()
        events += list(lines)
    code = srv.proc.wait(20)
    stopped = time.perf_counter() - started
    srv.log.close()
    data = [e for e in events if e.startswith("data: ")]
    assert data[-1] == "data: [DONE]"
    error = json.loads(data[-2][6:])["error"]
    assert error["code"] == "shutting_down" and error["type"] == "service_unavailable"
    assert code == 0 and stopped < 10, (code, stopped)
    assert wait_for(lambda: _gone(children), 10)  # the reaper, vLLM's processes: all gone
    assert "Traceback" not in srv.log_text()
    assert [p.name for p in srv.system_temp.iterdir() if not p.name.startswith("torchinductor")] == []


def test_a_stream_past_its_deadline_ends_with_an_in_band_504(tiny, tiny_home, tmp_path, short_tmp):
    srv = _server("transformers", tiny_home, tmp_path, "deadline", short_tmp, AVCHAT_REQUEST_TIMEOUT_S="1")
    try:
        with httpx.stream("POST", srv.url + "/v1/chat/completions", json={**LONG, "stream": True}, timeout=60) as r:
            data = [line for line in r.iter_lines() if line.startswith("data: ")]
        assert data[-1] == "data: [DONE]"
        assert json.loads(data[-2][6:])["error"]["type"] == "timeout_error"
        running = lambda: httpx.get(srv.url + "/metrics").text  # noqa: E731
        assert wait_for(lambda: "avchat_engine_generations_running 0.0" in running(), 5)
    finally:
        srv.stop()


def test_the_reaper_kills_what_a_killed_service_started(tmp_path):
    """A marked process (as ``python -m service`` marks itself) with a watcher and two children:
    SIGKILL it, and the watcher kills the children."""
    script = (
        "import os, subprocess, sys, time\n"
        "from service import reaper\n"
        "reaper.start_guard()\n"
        "kids = [subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']) for _ in range(2)]\n"
        "print(' '.join(str(k.pid) for k in kids), flush=True)\n"
        "time.sleep(600)\n"
    )
    shell = f'export AVCHAT_SERVICE_PID=$$; exec {sys.executable} -c "$0"'
    proc = subprocess.Popen(
        ["sh", "-c", shell, script], stdout=subprocess.PIPE, text=True, cwd=os.path.dirname(os.path.dirname(__file__))
    )
    kids = [psutil.Process(int(pid)) for pid in proc.stdout.readline().split()]
    assert len(kids) == 2 and all(k.is_running() for k in kids)
    proc.kill()
    proc.wait()
    assert wait_for(lambda: _gone(kids), 10)


@VLLM
def test_sigkill_of_the_service_leaves_no_vllm_process_and_the_next_start_sweeps(tiny, tiny_home, tmp_path, short_tmp):
    srv = _server("vllm", tiny_home, tmp_path, "killed", short_tmp)
    engine = [p for p in _descendants(srv.proc.pid) if "python" in p.name() or "VLLM" in p.name()]
    assert engine, "vLLM's engine runs in processes of its own"
    sockets = [p for p in srv.system_temp.iterdir() if p.name.startswith("avchat-vllm-")]
    assert sockets
    srv.proc.kill()
    srv.proc.wait()
    srv.log.close()
    assert wait_for(lambda: _gone(engine), 15), [p.name() for p in engine if p.is_running()]
    again = _server("transformers", tiny_home, tmp_path, "again", short_tmp)  # the same TMPDIR
    try:
        assert not [p for p in sockets if p.exists()]  # the killed one's socket folder is swept
    finally:
        again.stop()


@VLLM
def test_a_dead_engine_makes_the_service_unready_and_exit_3(tiny, tiny_home, tmp_path, short_tmp):
    srv = _server("vllm", tiny_home, tmp_path, "dead-engine", short_tmp)
    children = _descendants(srv.proc.pid)
    core = [p for p in children if "EngineCore" in " ".join(p.cmdline()) + p.name()]
    assert core, [(p.name(), p.cmdline()) for p in children]
    core[0].kill()
    code = srv.proc.wait(30)
    srv.log.close()
    assert code == 3
    log = srv.log_text()
    assert "the generation engine died" in log and "Traceback" not in log
    assert wait_for(lambda: _gone(children), 15)
