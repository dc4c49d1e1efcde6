"""Running ffmpeg on untrusted files: every input goes through ffmpeg's demuxer allow-list
(``-format_whitelist``: the mp4/mov family, Matroska/WebM, AVI, FLV, MPEG-TS, Ogg, WAV, MP3,
FLAC, AAC and single still images) and protocol allow-list (``file`` only), so playlists,
manifests, concat scripts, image sequences and network protocols are unreachable; each process
runs with its own thread count, an address-space cap and a timeout, and its output is
collected within bounds.

An :class:`FfmpegJob` is a command line plus the parser of its output; :func:`run_job` runs one
in this thread, and the service's asyncio runner runs the same jobs through
:class:`OutputCollector`.
"""

from __future__ import annotations

import os
import re
import resource
import selectors
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .media import MediaError, MediaLimits

# ffmpeg demuxers a file may be opened with (names as `ffmpeg -demuxers` lists them).
ALLOWED_DEMUXERS = (
    "mov",
    "matroska",
    "avi",
    "flv",
    "mpegts",
    "ogg",
    "wav",
    "mp3",
    "flac",
    "aac",
    "png_pipe",
    "jpeg_pipe",
    "webp_pipe",
    "bmp_pipe",
    "gif",
    "gif_pipe",
)


def ffmpeg_exe() -> str:
    """The ffmpeg binary: ``$AVCHAT_FFMPEG``, else the system's, else imageio-ffmpeg's."""
    exe = os.environ.get("AVCHAT_FFMPEG") or shutil.which("ffmpeg")
    if exe:
        return exe
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


class FfmpegMissing(RuntimeError):
    """The ffmpeg binary cannot be run (missing, not executable, or older than 5.1)."""


def check_ffmpeg(timeout: float = 10.0) -> str:
    """ffmpeg's version line, once it has answered ``-version``; raises :class:`FfmpegMissing`."""
    exe = ffmpeg_exe()
    hint = "set AVCHAT_FFMPEG to an ffmpeg 5.1 or newer, or install one"
    try:
        out = subprocess.run([exe, "-hide_banner", "-version"], capture_output=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise FfmpegMissing(f"ffmpeg is not usable ({exe}: {exc.__class__.__name__}: {exc}); {hint}") from None
    line = out.stdout.decode("utf-8", "replace").split("\n", 1)[0].strip()
    if out.returncode != 0 or not line.startswith("ffmpeg version"):
        raise FfmpegMissing(f"ffmpeg is not usable ({exe} -version exited {out.returncode}); {hint}")
    m = re.match(r"ffmpeg version n?(\d+)\.(\d+)", line)
    if m and (int(m.group(1)), int(m.group(2))) < (5, 1):
        raise FfmpegMissing(f"ffmpeg {m.group(1)}.{m.group(2)} is too old ({exe}); {hint}")
    return line


@dataclass
class JobOutput:
    returncode: int
    stdout: bytes
    stderr: str  # the first and last 32 KiB
    marks: dict[str, int]  # how many stderr lines held each of the job's markers


@dataclass
class FfmpegJob:
    """One ffmpeg run: its command line, what it does (for messages), how its output is read,
    and the budgets it runs under. The blocking runner here and the service's asyncio runner
    both execute these through :class:`OutputCollector`."""

    args: list[str]
    what: str
    parse: Callable[[JobOutput], Any]
    limits: MediaLimits
    consume: Callable[[bytes], None] | None = None  # stdout parsed as it streams (the probe)
    max_stdout: int = 0  # collected stdout beyond this kills the job
    markers: tuple[str, ...] = ()
    cost: int = 0  # pixels it decodes (frames x width x height): how heavy it is, known before it runs


class OutputCollector:
    """Bounded collection of one job's output: stdout is handed to ``consume`` or kept up to
    ``max_stdout``; stderr keeps its head and tail and counts marker lines."""

    KEEP = 32 * 1024

    def __init__(self, job: FfmpegJob):
        self.job = job
        self.stdout = bytearray()
        self.head = bytearray()
        self.tail = bytearray()
        self.partial = b""
        self.marks = dict.fromkeys(job.markers, 0)

    def on_stdout(self, data: bytes) -> None:
        if self.job.consume is not None:
            self.job.consume(data)
            return
        self.stdout += data
        if len(self.stdout) > self.job.max_stdout:
            raise MediaError(f"ffmpeg produced more output than expected while trying to {self.job.what}")

    def on_stderr(self, data: bytes) -> None:
        if len(self.head) < self.KEEP:
            self.head += data[: self.KEEP - len(self.head)]
        self.tail = (self.tail + data)[-self.KEEP :]
        if self.marks:
            lines = (self.partial + data).split(b"\n")
            self.partial = lines.pop()[-4096:]
            for line in lines:
                for marker in self.marks:
                    if marker.encode() in line:
                        self.marks[marker] += 1

    def result(self, returncode: int) -> JobOutput:
        stderr = bytes(self.head)
        if len(self.head) >= self.KEEP:
            stderr += b"\n...\n" + bytes(self.tail)
        return JobOutput(returncode, bytes(self.stdout), stderr.decode("utf-8", "replace"), self.marks)


def cap_memory(pid: int, limits: MediaLimits) -> None:
    """Caps a started ffmpeg's address space (set right after the start: a pre-exec hook is
    unsafe in a threaded process, and ffmpeg allocates nothing large before it has parsed its
    input)."""
    try:
        resource.prlimit(pid, resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes))
    except (ProcessLookupError, PermissionError, OSError):
        pass


def timeout_error(path: str, timeout: float, what: str) -> MediaError:
    return MediaError(f"ffmpeg took longer than {timeout:.0f} s to {what}; the file is too long or damaged", path)


def run_job(job: FfmpegJob, path: str) -> Any:
    """Runs a job to completion in this thread (killing ffmpeg on timeout or any error)."""
    proc = subprocess.Popen(job.args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    cap_memory(proc.pid, job.limits)
    out = OutputCollector(job)
    deadline = time.monotonic() + job.limits.timeout
    try:
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ, out.on_stdout)
            sel.register(proc.stderr, selectors.EVENT_READ, out.on_stderr)
            while sel.get_map():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise timeout_error(path, job.limits.timeout, job.what)
                for key, _ in sel.select(remaining):
                    data = os.read(key.fd, 1 << 16)
                    if data:
                        key.data(data)
                    else:
                        sel.unregister(key.fileobj)
        returncode = proc.wait(max(deadline - time.monotonic(), 0.1))
    except subprocess.TimeoutExpired:
        raise timeout_error(path, job.limits.timeout, job.what) from None
    finally:
        if proc.returncode is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    return job.parse(out.result(returncode))


_NOISE = ("ffmpeg version", "built with", "configuration:", "lib", "...", "Last message repeated")


def error_summary(stderr: str, path: str | None = None) -> str:
    """ffmpeg's last useful line, without the file's path (a temp path is nobody's business)."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    useful = [ln for ln in lines if not ln.startswith(_NOISE)]
    line = useful[-1] if useful else "ffmpeg failed"
    if path is not None:
        full = os.path.abspath(path)
        line = line.replace(f"file:{full}: ", "").replace(f"{full}: ", "").replace(full, "the file")
    return line[:300]


def out_of_memory(stderr: str) -> bool:
    return "Cannot allocate memory" in stderr or "std::bad_alloc" in stderr


def input_args(path: str, limits: MediaLimits, forced: str | None, *extra: str) -> list[str]:
    """Input options every job shares: the allow-lists, the thread cap, a forced demuxer for
    sniffed still images, and the path as an explicit file: URL."""
    args = [
        "-threads",
        str(limits.threads),
        *extra,
        "-format_whitelist",
        ",".join(ALLOWED_DEMUXERS),
        "-protocol_whitelist",
        "file",
    ]
    if forced:
        args += ["-f", forced]
    return args + ["-i", "file:" + os.path.abspath(path)]


def command(*args: str, loglevel: str = "error") -> list[str]:
    return [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", loglevel, *args]
