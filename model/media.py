"""Media decoding with ffmpeg, safe for files a stranger sent: probe a file, sample frames
uniformly, extract 16 kHz mono audio.

Every step is one ffmpeg subprocess (an :class:`FfmpegJob`: a command line plus the parser of
its output), run under a timeout, a thread cap and a memory cap. Anything wrong with the input
raises :class:`MediaError` (or a subclass) with a message that says what is wrong.

Untrusted input:

* Only real containers are opened. Every input goes through ffmpeg's demuxer allow-list
  (``-format_whitelist``: the mp4/mov family, Matroska/WebM, AVI, FLV, MPEG-TS, Ogg, WAV, MP3,
  FLAC, AAC and single still images) and protocol allow-list (``file`` only), so playlists,
  manifests, concat scripts, image sequences and network protocols are unreachable: a playlist
  uploaded as ``clip.mp4`` is refused, and nothing it names is opened.
* The probe is a demux-only packet scan (nothing is decoded), parsed as it streams, and checked
  against budgets (pixels per frame, packets, duration) before any decode starts.

Frame sampling (Video-ChatGPT's rule): one frame from the middle of each of ``n`` equal
segments of the video (or of the requested window), or every frame when there are fewer. The
frames are chosen by their index in presentation order, never by matching timestamps, so files
whose timestamps start late, go negative or are shifted by the container decode the same:

* ``full`` mode decodes the whole stream and ffmpeg's ``select`` keeps the chosen indices;
  frames are scaled inside ffmpeg, so source-resolution frames never reach Python.
* ``keyframe`` mode is used when keyframes are denser than the targets (long clips) and each
  target's nearest keyframe lies inside its own segment: the decoder skips non-key frames. The
  decoder must produce exactly the keyframes the probe listed (open-GOP streams may not); when
  it does not, the sampling falls back to a full decode.
* ``all`` mode: the clip has no more frames than wanted; ``image``: a still image (one frame).

Rotation metadata is honoured by ffmpeg's autorotation, so frames come out upright.

    python -m model.media clip.mp4      # prints the probe and the sampling plan
"""

from __future__ import annotations

import bisect
import os
import re
import resource
import selectors
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

AUDIO_SAMPLE_RATE = 16_000
# ffmpeg demuxers a file may be opened with (names as `ffmpeg -demuxers` lists them).
ALLOWED_DEMUXERS = ("mov", "matroska", "avi", "flv", "mpegts", "ogg", "wav", "mp3", "flac", "aac",
                    "png_pipe", "jpeg_pipe", "webp_pipe", "bmp_pipe", "gif", "gif_pipe")
IMAGE_CODECS = {"png", "mjpeg", "webp", "bmp", "gif"}
_NOPTS = -(2**63)
_KEY, _DISCARD = 0x1, 0x4  # AV_PKT_FLAG_KEY, AV_PKT_FLAG_DISCARD (packets an edit list hides)


class MediaError(ValueError):
    """The file is not usable media: not a media file, empty, truncated, corrupt, or lacking
    the stream that was asked for. The message says which."""


class NotAContainerError(MediaError):
    """The file is a playlist, manifest or script that points at other files, not a video."""


class MediaLimitError(MediaError):
    """The file is over one of the decoding budgets (pixels, packets, duration, memory)."""


class MissingStream(MediaError):
    """The file has none of the streams (audio, video) that were asked for."""


class InvalidWindow(ValueError):
    """A requested start/end does not fit the file."""


def _env_number(name: str, default: float) -> float:
    value = os.environ.get(name)
    return float(value) if value else default


@dataclass(frozen=True)
class MediaLimits:
    """Budgets for one file. Defaults come from ``AVCHAT_*`` environment variables, which the
    service's settings share."""

    max_pixels: int = 4096 * 4096
    """Largest frame (width x height) that is decoded at all (AVCHAT_MAX_PIXELS)."""
    max_packets: int = 1_000_000
    """Most packets (video + audio) a file may have (AVCHAT_MAX_PACKETS)."""
    max_seconds: float | None = None
    """Longest file accepted (AVCHAT_MAX_VIDEO_SECONDS); None: no limit."""
    threads: int = 2
    """Threads per ffmpeg process (AVCHAT_FFMPEG_THREADS)."""
    memory_bytes: int = 2 * 1024**3
    """Address-space cap of each ffmpeg process (AVCHAT_FFMPEG_MEMORY_BYTES)."""
    timeout: float = 120.0
    """Seconds one ffmpeg process may run (AVCHAT_FFMPEG_TIMEOUT_S)."""

    @classmethod
    def from_env(cls) -> MediaLimits:
        seconds = os.environ.get("AVCHAT_MAX_VIDEO_SECONDS")
        return cls(max_pixels=int(_env_number("AVCHAT_MAX_PIXELS", cls.max_pixels)),
                   max_packets=int(_env_number("AVCHAT_MAX_PACKETS", cls.max_packets)),
                   max_seconds=float(seconds) if seconds else None,
                   threads=int(_env_number("AVCHAT_FFMPEG_THREADS", cls.threads)),
                   memory_bytes=int(_env_number("AVCHAT_FFMPEG_MEMORY_BYTES", cls.memory_bytes)),
                   timeout=_env_number("AVCHAT_FFMPEG_TIMEOUT_S", cls.timeout))


@dataclass
class MediaInfo:
    """What a probe learns about a file. Times are seconds from the start of the file (the
    earliest packet of the streams used)."""

    path: str
    duration: float  # seconds, of the longest stream
    has_video: bool
    has_audio: bool
    width: int = 0  # as displayed, i.e. after rotation
    height: int = 0
    rotation: int = 0  # degrees, from the display matrix
    video_codec: str | None = None
    audio_codec: str | None = None
    frame_times: list[float] = field(default_factory=list)  # presentation order
    keyframe_times: list[float] = field(default_factory=list)
    video_start: float = 0.0
    video_end: float = 0.0
    audio_start: float = 0.0
    audio_end: float = 0.0
    forced_format: str | None = None  # the demuxer a sniffed still image is opened with

    @property
    def num_frames(self) -> int:
        return len(self.frame_times)

    @property
    def is_image(self) -> bool:
        """A still image (a GIF counts by its first frame)."""
        return self.has_video and self.video_codec in IMAGE_CODECS and (
            self.num_frames == 1 or self.video_codec == "gif")


@dataclass
class Frames:
    """Sampled frames as RGB uint8 ``(n, size, size, 3)`` and their times in seconds."""

    frames: np.ndarray
    timestamps: list[float]
    mode: str  # "all", "full", "keyframe" or "image"


def ffmpeg_exe() -> str:
    """The ffmpeg binary: ``$AVCHAT_FFMPEG``, else the system's, else imageio-ffmpeg's."""
    exe = os.environ.get("AVCHAT_FFMPEG") or shutil.which("ffmpeg")
    if exe:
        return exe
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


# ---------------------------------------------------------------------------------------------
# Jobs and the blocking runner


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
        self.tail = (self.tail + data)[-self.KEEP:]
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
    return MediaError(f"{os.path.basename(path)}: ffmpeg took longer than {timeout:.0f} s to {what}; "
                      "the file is too long or damaged")


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


def _error_summary(stderr: str) -> str:
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    useful = [ln for ln in lines if not ln.startswith(("ffmpeg version", "built with", "configuration:", "lib",
                                                       "..."))]
    return (useful[-1] if useful else "ffmpeg failed")[:300]


def _out_of_memory(stderr: str) -> bool:
    return "Cannot allocate memory" in stderr or "std::bad_alloc" in stderr


def _input(path: str, limits: MediaLimits, forced: str | None, *extra: str) -> list[str]:
    """Input options every job shares: the allow-lists, the thread cap, a forced demuxer for
    sniffed still images, and the path as an explicit file: URL."""
    args = ["-threads", str(limits.threads), *extra, "-format_whitelist", ",".join(ALLOWED_DEMUXERS),
            "-protocol_whitelist", "file"]
    if forced:
        args += ["-f", forced]
    return args + ["-i", "file:" + os.path.abspath(path)]


def _command(*args: str, loglevel: str = "error") -> list[str]:
    return [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", loglevel, *args]


# ---------------------------------------------------------------------------------------------
# Before ffmpeg: the file exists, and what its first bytes say it is

_POINTERS = [  # (test on the first bytes, what the file is)
    (lambda h: h.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"#EXTM3U"), "an HLS playlist (.m3u8)"),
    (lambda h: b"<MPD" in h[:4096], "a DASH manifest (.mpd)"),
    (lambda h: h.lstrip().startswith(b"ffconcat"), "an ffconcat script"),
    (lambda h: h.startswith(b"v=0") and b"\nm=" in h, "an SDP session description"),
    (lambda h: h.lstrip().lower().startswith((b"[playlist]", b"#extm3u")), "a playlist"),
]
_IMAGES = [  # (magic bytes, demuxer): forced, so a file's name never selects ffmpeg's image2 sequences
    (b"\x89PNG\r\n\x1a\n", "png_pipe"), (b"\xff\xd8\xff", "jpeg_pipe"), (b"GIF87a", "gif"), (b"GIF89a", "gif"),
    (b"BM", "bmp_pipe"),
]


def check_file(path: str) -> str | None:
    """Refuses what is not a media file before ffmpeg sees it; returns the demuxer to force for
    a still image (None otherwise)."""
    if not os.path.exists(path):
        raise MediaError(f"{path}: no such file")
    if os.path.isdir(path):
        raise MediaError(f"{path}: is a folder, not a media file")
    if os.path.getsize(path) == 0:
        raise MediaError(f"{os.path.basename(path)}: the file is empty")
    with open(path, "rb") as f:
        head = f.read(8192)
    for test, what in _POINTERS:
        if test(head):
            raise NotAContainerError(f"{os.path.basename(path)}: the file is {what}, which points at other files, "
                                     "not a video; send the video file itself")
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp_pipe"
    return next((fmt for magic, fmt in _IMAGES if head.startswith(magic) and (fmt != "bmp_pipe" or len(head) > 26)),
                None)


# ---------------------------------------------------------------------------------------------
# Probe: one demux-only pass that lists every packet (ffmpeg's framecrc muxer), plus the
# stream description ffmpeg prints on stderr for the rotation.


class ProbeParser:
    """Parses framecrc output as it streams; refuses a file over the packet budget as soon as
    it gets there."""

    def __init__(self, path: str, limits: MediaLimits):
        self.path, self.limits = path, limits
        self.partial = b""
        self.time_base: dict[int, tuple[int, int]] = {}
        self.kinds: dict[int, str] = {}
        self.codecs: dict[int, str] = {}
        self.dims: dict[int, tuple[int, int]] = {}
        self.packets: dict[int, list[tuple[int, int, bool]]] = {}  # (pts, duration, key)
        self.count = 0

    def feed(self, data: bytes) -> None:
        lines = (self.partial + data).split(b"\n")
        self.partial = lines.pop()
        for line in lines:
            self._line(line.decode("utf-8", "replace"))

    def _line(self, line: str) -> None:
        if line.startswith("#"):
            m = re.match(r"#(\w+) (\d+): (.*)", line)
            if not m:
                return
            key, idx, value = m.group(1), int(m.group(2)), m.group(3).strip()
            if key == "tb":
                num, den = value.split("/")
                self.time_base[idx] = (int(num), int(den))
                self.packets[idx] = []
            elif key == "media_type":
                self.kinds[idx] = value
            elif key == "codec_id":
                self.codecs[idx] = value
            elif key == "dimensions":
                w, h = value.split("x")
                self.dims[idx] = (int(w), int(h))
            return
        parts = line.split(",", 6)
        if len(parts) < 5 or not parts[0].strip().isdigit():
            return
        self.count += 1
        if self.count > self.limits.max_packets:
            raise MediaLimitError(f"{os.path.basename(self.path)}: the file has more than {self.limits.max_packets} "
                                  "packets, over this service's limit (AVCHAT_MAX_PACKETS)")
        idx, dts, pts, duration = (int(p) for p in parts[:4])
        flags = _KEY
        rest = parts[6] if len(parts) > 6 else ""
        m = re.search(r"F=0x([0-9A-Fa-f]+)", rest)
        if m:
            flags = int(m.group(1), 16)
        if flags & _DISCARD or idx not in self.packets:
            return
        self.packets[idx].append((dts if pts == _NOPTS else pts, duration, bool(flags & _KEY)))

    def finish(self, out: JobOutput) -> MediaInfo:
        name = os.path.basename(self.path)
        if self.partial:
            self._line(self.partial.decode("utf-8", "replace"))
            self.partial = b""
        if out.returncode != 0:
            if "Format not on whitelist" in out.stderr:
                raise NotAContainerError(f"{name}: not a video container this service opens (it takes mp4/mov, "
                                         "mkv/webm, avi, flv, mpeg-ts, ogg, wav, mp3, flac, aac and still images)")
            if _out_of_memory(out.stderr):
                raise MediaLimitError(f"{name}: reading the file needs more memory than ffmpeg is allowed")
            raise MediaError(f"{name}: not a readable media file ({_error_summary(out.stderr)})")
        if out.marks.get("partial file"):
            raise MediaError(f"{name}: the file is truncated (it ends before the data its index points to)")
        video = next((i for i, k in self.kinds.items() if k == "video" and self.packets.get(i)), None)
        audio = next((i for i, k in self.kinds.items() if k == "audio" and self.packets.get(i)), None)
        if video is None and audio is None:
            raise MediaError(f"{name}: no usable audio or video stream (not a media file, or truncated)")
        spans = {}
        for idx in (video, audio):
            if idx is not None:
                num, den = self.time_base[idx]
                ps = self.packets[idx]
                spans[idx] = (min(p[0] for p in ps) * num / den, max(p[0] + max(p[1], 0) for p in ps) * num / den)
        origin = min(s for s, _ in spans.values())
        info = MediaInfo(path=self.path, duration=max(e for _, e in spans.values()) - origin,
                         has_video=video is not None, has_audio=audio is not None)
        if video is not None:
            num, den = self.time_base[video]
            ordered = sorted(self.packets[video])  # presentation order
            info.video_codec = self.codecs.get(video)
            info.frame_times = [p[0] * num / den - origin for p in ordered]
            info.keyframe_times = [p[0] * num / den - origin for p in ordered if p[2]]
            info.video_start, info.video_end = (t - origin for t in spans[video])
            if info.duration == 0.0:  # a single frame without a duration
                info.duration = 1 / 25
            w, h = self.dims.get(video, (0, 0))
            m = re.search(r"rotation of (-?[\d.]+) degrees", out.stderr)
            info.rotation = int(round(float(m.group(1)))) % 360 if m else 0
            info.width, info.height = (h, w) if info.rotation in (90, 270) else (w, h)
        if audio is not None:
            info.audio_codec = self.codecs.get(audio)
            info.audio_start, info.audio_end = (t - origin for t in spans[audio])
        return info


def probe_job(path: str, limits: MediaLimits, forced: str | None = None) -> FfmpegJob:
    # 0:V skips attached pictures (album art in an audio file is not a video).
    parser = ProbeParser(path, limits)

    def parse(out: JobOutput) -> MediaInfo:
        info = parser.finish(out)
        info.forced_format = forced
        return info

    args = _command(*_input(path, limits, forced), "-map", "0:V:0?", "-map", "0:a:0?", "-c", "copy",
                    "-f", "framecrc", "pipe:", loglevel="info")
    return FfmpegJob(args, "read the file", parse, limits, consume=parser.feed, markers=("partial file",))


def check_budget(info: MediaInfo, limits: MediaLimits) -> None:
    """Refuses, before any decode, a file over the pixel or duration budget."""
    name = os.path.basename(info.path)
    if info.width * info.height > limits.max_pixels:
        raise MediaLimitError(f"{name}: its frames are {info.width}x{info.height} pixels, over this service's limit "
                              f"of {limits.max_pixels} pixels per frame (AVCHAT_MAX_PIXELS)")
    if limits.max_seconds is not None and info.duration > limits.max_seconds:
        raise MediaLimitError(f"{name}: the file is {info.duration:.0f} s long; this service takes at most "
                              f"{limits.max_seconds:.0f} s (AVCHAT_MAX_VIDEO_SECONDS)")


def probe(path: str, limits: MediaLimits | None = None) -> MediaInfo:
    """Lists the streams and every video packet's time without decoding anything."""
    limits = limits or MediaLimits.from_env()
    return run_job(probe_job(path, limits, check_file(path)), path)


# ---------------------------------------------------------------------------------------------
# Frame sampling


@dataclass
class Window:
    """The span to analyse, in seconds from the start of the file; ``end`` None: to the end."""

    start: float = 0.0
    end: float | None = None

    def bounds(self, info: MediaInfo) -> tuple[float, float]:
        """(start, end) checked against the file's duration."""
        end = info.duration if self.end is None else self.end
        if self.start < 0 or (self.end is not None and self.end <= self.start):
            raise InvalidWindow(f"start ({self.start:g} s) must be at least 0 and before end ({end:g} s)")
        if self.start >= info.duration:
            raise InvalidWindow(f"start ({self.start:g} s) is past the end of the file ({info.duration:.2f} s)")
        if self.end is not None and self.end > info.duration + 1e-3:
            raise InvalidWindow(f"end ({self.end:g} s) is past the end of the file ({info.duration:.2f} s)")
        return self.start, min(end, info.duration)


@dataclass
class SamplingPlan:
    mode: str  # "all", "full", "keyframe" or "image"
    wanted: list[int]  # distinct indices to keep, ascending: into frame_times (keyframe_times in keyframe mode)
    order: list[int]  # for each output sample, its position in `wanted`
    times: list[float]  # the time of each wanted frame


def segment_targets(start: float, duration: float, n: int) -> list[float]:
    """The middle of each of ``n`` equal segments of ``[start, start + duration)``."""
    return [start + (i + 0.5) * duration / n for i in range(n)]


def _nearest(times: list[float], t: float, lo: int = 0, hi: int | None = None) -> int:
    """Index of the time nearest ``t`` among ``times[lo:hi]`` (sorted)."""
    hi = len(times) if hi is None else hi
    i = bisect.bisect_left(times, t, lo, hi)
    candidates = [j for j in (i - 1, i) if lo <= j < hi]
    return min(candidates, key=lambda j: (abs(times[j] - t), j))


def plan_sampling(info: MediaInfo, n: int, window: Window | None = None) -> SamplingPlan:
    """Chooses which frames to decode for ``n`` uniform samples, and how."""
    if not info.has_video:
        raise MediaError(f"{os.path.basename(info.path)}: has no video stream")
    times = info.frame_times
    if info.is_image:
        return SamplingPlan("image", [0], [0], [0.0])
    if window is None and len(times) <= n:
        return SamplingPlan("all", list(range(len(times))), list(range(len(times))), list(times))
    start, end, lo, hi = _video_span(info, window)
    if hi - lo <= n:  # every frame of the window
        return _plan("full", list(range(lo, hi)), times)
    targets = segment_targets(start, end - start, n)
    keys = info.keyframe_times
    if len(keys) >= n:
        k_lo, k_hi = bisect.bisect_left(keys, start - 1e-6), bisect.bisect_left(keys, end - 1e-6)
        if k_hi - k_lo >= n:
            chosen = [_nearest(keys, t, k_lo, k_hi) for t in targets]
            half = (end - start) / (2 * n)
            if all(-half <= keys[c] - t < half for c, t in zip(chosen, targets)):
                return _plan("keyframe", chosen, keys)
    return _plan("full", [_nearest(times, t, lo, hi) for t in targets], times)


def _plan(mode: str, chosen: list[int], times: list[float]) -> SamplingPlan:
    wanted = sorted(set(chosen))
    position = {idx: k for k, idx in enumerate(wanted)}
    return SamplingPlan(mode, wanted, [position[c] for c in chosen], [times[i] for i in wanted])


def _select_expr(indices: list[int]) -> str:
    terms = [f"eq(n,{i})" for i in indices]
    # ffmpeg's expression parser nests one level per "+", and gives up near 100: sum in groups.
    while len(terms) > 10:
        terms = ["(" + "+".join(terms[k:k + 10]) + ")" for k in range(0, len(terms), 10)]
    return "+".join(terms)


_SHOWINFO = "pts_time:"  # on the one line showinfo prints per frame


def frames_job(path: str, info: MediaInfo, n: int, size: int, limits: MediaLimits,
               window: Window | None = None, plan: SamplingPlan | None = None) -> FfmpegJob:
    """The one decode pass that takes the planned frames, scaled to ``size`` x ``size``."""
    plan = plan or plan_sampling(info, n, window)
    decoder = ["-max_pixels", str(limits.max_pixels)]
    if plan.mode == "keyframe":
        decoder += ["-skip_frame", "nokey"]
    filters = []
    if plan.mode == "keyframe":
        filters.append("showinfo")  # counts the keyframes the decoder really produced
    if plan.mode in ("full", "keyframe"):
        filters.append(f"select='{_select_expr(plan.wanted)}'")
    filters.append(f"scale={size}:{size}:flags=bicubic")
    count = len(plan.wanted)
    # Stop after the last wanted frame, except in keyframe mode, where every keyframe must be counted.
    stop = [] if plan.mode == "keyframe" else ["-frames:v", str(count)]
    args = _command("-filter_threads", str(limits.threads), *_input(path, limits, info.forced_format, *decoder),
                    "-map", "0:V:0", "-vf", ",".join(filters), "-fps_mode", "passthrough", *stop,
                    "-an", "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:",
                    loglevel="info" if plan.mode == "keyframe" else "error")

    def parse(out: JobOutput) -> Frames | FfmpegJob:
        if plan.mode == "keyframe" and out.marks[_SHOWINFO] != len(info.keyframe_times) and out.returncode == 0:
            # The decoder skipped keyframes the probe listed (open GOP), so indices would not match:
            # the caller runs this full decode instead.
            return frames_job(path, info, n, size, limits, window, _full_plan(info, n, window))
        return assemble_frames(path, plan, out, size)

    return FfmpegJob(args, "decode the video", parse, limits, max_stdout=count * size * size * 3,
                     markers=(_SHOWINFO,))


def _full_plan(info: MediaInfo, n: int, window: Window | None) -> SamplingPlan:
    start, end, lo, hi = _video_span(info, window)
    times = info.frame_times
    if hi - lo <= n:
        return _plan("full", list(range(lo, hi)), times)
    return _plan("full", [_nearest(times, t, lo, hi) for t in segment_targets(start, end - start, n)], times)


def _video_span(info: MediaInfo, window: Window | None) -> tuple[float, float, int, int]:
    """The part of the video stream inside the window: (start, end) in seconds and the range of
    frame indices in it (at least one frame: the nearest)."""
    w_start, w_end = (window or Window()).bounds(info)
    start, end = max(w_start, info.video_start), min(w_end, info.video_end)
    times = info.frame_times
    if end <= start:  # the window misses the video stream: its nearest frame
        i = _nearest(times, w_start)
        return times[i], times[i], i, i + 1
    lo = bisect.bisect_left(times, start - 1e-6)
    hi = max(bisect.bisect_left(times, end - 1e-6), lo + 1)
    return start, end, lo, min(hi, len(times))


def assemble_frames(path: str, plan: SamplingPlan, out: JobOutput, size: int) -> Frames:
    """Turns ffmpeg's raw output into the sampled frames, in target order."""
    name = os.path.basename(path)
    frame_bytes = size * size * 3
    count = len(out.stdout) // frame_bytes
    if count == 0:
        if _out_of_memory(out.stderr):
            raise MediaLimitError(f"{name}: decoding the video needs more memory than ffmpeg is allowed "
                                  "(AVCHAT_FFMPEG_MEMORY_BYTES)")
        if out.returncode != 0:
            raise MediaError(f"{name}: the video stream could not be decoded ({_error_summary(out.stderr)})")
        raise MediaError(f"{name}: the video stream is corrupt: ffmpeg decoded no frame from it")
    decoded = np.frombuffer(out.stdout[: count * frame_bytes], dtype=np.uint8).reshape(count, size, size, 3)
    # Frames come out in index order; if the decoder lost some at the end, later targets take the last one.
    picks = [min(k, count - 1) for k in plan.order]
    return Frames(frames=decoded[picks], timestamps=[plan.times[k] for k in picks], mode=plan.mode)


# ---------------------------------------------------------------------------------------------
# Audio


def audio_job(path: str, info: MediaInfo, limits: MediaLimits, max_seconds: float | None = 30.0,
              window: Window | None = None) -> FfmpegJob:
    """16 kHz mono float32 PCM of ``max_seconds`` from the window's start."""
    start = 0.0
    seconds = max_seconds
    if window is not None:
        start, end = window.bounds(info)
        span = end - start
        seconds = span if seconds is None else min(seconds, span)
    seek = ["-ss", f"{start:.3f}"] if start > 0 else []
    out_opts = ["-t", f"{seconds:.3f}"] if seconds is not None else []
    args = _command(*_input(path, limits, info.forced_format, *seek), "-map", "0:a:0", "-vn", *out_opts,
                    "-ac", "1", "-ar", str(AUDIO_SAMPLE_RATE), "-f", "f32le", "pipe:")
    longest = (seconds if seconds is not None else info.duration) + 1
    return FfmpegJob(args, "decode the audio", lambda out: parse_audio(path, out), limits,
                     max_stdout=int(longest * AUDIO_SAMPLE_RATE * 4))


def parse_audio(path: str, out: JobOutput) -> np.ndarray:
    if out.returncode != 0 and not out.stdout:
        if _out_of_memory(out.stderr):
            raise MediaLimitError(f"{os.path.basename(path)}: decoding the audio needs more memory than ffmpeg is "
                                  "allowed (AVCHAT_FFMPEG_MEMORY_BYTES)")
        raise MediaError(f"{os.path.basename(path)}: the audio could not be decoded ({_error_summary(out.stderr)})")
    return np.frombuffer(out.stdout[: len(out.stdout) // 4 * 4], dtype=np.float32).copy()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    for path in argv:
        try:
            info = probe(path)
        except MediaError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"{path}: {info.duration:.3f} s, video={info.video_codec} {info.width}x{info.height} "
              f"rot={info.rotation} frames={info.num_frames} keyframes={len(info.keyframe_times)}, "
              f"audio={info.audio_codec}")
        if info.has_video:
            plan = plan_sampling(info, 100)
            print(f"  sampling: mode={plan.mode}, {len(plan.wanted)} distinct frames")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
