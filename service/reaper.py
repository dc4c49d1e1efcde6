"""No process of the service outlives it, even when it is killed with SIGKILL.

* ``python -m service`` marks itself: it re-executes once with ``AVCHAT_SERVICE_PID=<its pid>``
  in its environment (the pid survives ``exec``), so every process it starts carries the mark in
  ``/proc/<pid>/environ``: vLLM's engine core and workers (forked or spawned) and ffmpeg.
* :func:`start_guard` starts ``python -m service.reaper PID``, a small watcher that ignores the
  terminal's signals, waits for the service to exit (a pidfd, else polling) and then kills every
  process still carrying its mark. SIGKILL of the service leaves nothing running.
* :func:`sweep` runs at start: it kills marked processes whose service is gone (the watcher was
  killed too) and removes vLLM's socket folders of processes that are gone.
"""

from __future__ import annotations

import glob
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time

MARK = "AVCHAT_SERVICE_PID"
IPC_PREFIX = "avchat-vllm-"  # vllm_engine.py names its socket folders so: prefix, pid, random


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def marked(service_pid: int | None = None) -> dict[int, int]:
    """Processes carrying a service mark: pid -> the service pid it names (only ``service_pid``'s
    when given)."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = f.read()
        except OSError:
            continue
        m = re.search(rb"(?:^|\0)" + MARK.encode() + rb"=(\d+)\0", env)
        if m and (service_pid is None or int(m.group(1)) == service_pid):
            found[int(entry)] = int(m.group(1))
    return found


def kill_marked(service_pid: int) -> list[int]:
    """SIGKILLs what the (gone) service started; returns their pids."""
    pids = [pid for pid in marked(service_pid) if pid != service_pid]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    return pids


def sweep(temp_dir: str | None = None) -> dict[str, int]:
    """What stopped services left: their processes, and vLLM's socket folders."""
    me = os.getpid()
    orphans = 0
    for service_pid in {s for s in marked().values() if s != me and not alive(s)}:
        orphans += len(kill_marked(service_pid))
    folders = 0
    bases = {temp_dir or tempfile.gettempdir(), "/tmp"}  # vllm_engine.ipc_base() picks one of these
    for path in (p for base in bases for p in glob.glob(os.path.join(base, IPC_PREFIX + "*"))):
        m = re.match(re.escape(IPC_PREFIX) + r"(\d+)-", os.path.basename(path))
        if m and int(m.group(1)) != me and not alive(int(m.group(1))):
            shutil.rmtree(path, ignore_errors=True)
            folders += 1
    return {"processes": orphans, "folders": folders}


def mark_and_exec() -> None:
    """Re-executes this process once with its mark in the environment (a no-op once marked)."""
    if os.environ.get(MARK) != str(os.getpid()):
        os.environ[MARK] = str(os.getpid())
        os.execv(sys.executable, sys.orig_argv)


def start_guard() -> subprocess.Popen | None:
    """The watcher of this process (only for a marked process: unmarked, its children could not be told)."""
    if os.environ.get(MARK) != str(os.getpid()):
        return None
    env = {k: v for k, v in os.environ.items() if k != MARK}
    return subprocess.Popen(
        [sys.executable, "-m", "service.reaper", str(os.getpid())],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
    )


def _wait_for_exit(pid: int) -> None:
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):  # no pidfds (old kernel or Python): poll
        while alive(pid) and os.getppid() == pid:
            time.sleep(0.2)
        return
    with os.fdopen(fd) as f:
        select.select([f], [], [])


def main(argv: list[str]) -> int:
    # Ctrl-C and a stop reach the whole process group: this one outlives them, to clean up.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    pid = int(argv[0])
    _wait_for_exit(pid)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # children that are still stopping by themselves
        if not kill_marked(pid):
            return 0
        time.sleep(0.2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
