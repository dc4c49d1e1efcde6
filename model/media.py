"""Media decoding with ffmpeg: probe a file, sample frames uniformly, extract 16 kHz mono audio.

Every step is one ffmpeg subprocess (command lines built with ffmpeg-python) under a timeout,
so a hostile or broken file can neither hang nor crash the caller: anything wrong with the
input raises :class:`MediaError` with a message that says what is wrong.

Frame sampling (Video-ChatGPT's rule): one frame from the middle of each of ``n`` equal
segments of the video, or every frame when the clip has fewer. The plan is made from a
demux-only packet scan (cheap: nothing is decoded), then one decode pass picks the frames:

* ``full`` mode decodes the whole stream and keeps the frame nearest each target time;
  selection and scaling happen inside ffmpeg, so frames leave it already at the encoder's
  resolution and source-resolution frames are never held in Python.
* ``keyframe`` mode is used when the keyframes are denser than the targets (long clips): each
  target takes its nearest keyframe, provided that keyframe still lies inside the target's own
  segment, and the decoder skips every non-key frame (``-skip_frame nokey``). Decoding only
  keyframes costs about 1/GOP of a full decode, and unlike per-target seeking it needs one
  process, not ``n``.

Rotation metadata is honoured by ffmpeg's autorotation (on by default), so frames come out
upright.

    python -m model.media clip.mp4      # prints the probe and the sampling plan
"""

from __future__ import annotations

import bisect
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import ffmpeg
import numpy as np

DEFAULT_TIMEOUT_S = float(os.environ.get("AVCHAT_FFMPEG_TIMEOUT", "120"))
AUDIO_SAMPLE_RATE = 16_000
_DISCARD_FLAG = 0x4  # AV_PKT_FLAG_DISCARD: packets an edit list hides


class MediaError(ValueError):
    """The file is not usable media: not a media file, empty, truncated, corrupt, or lacking
    the stream that was asked for. The message says which."""


@dataclass
class StreamInfo:
    codec: str
    time_base: tuple[int, int]
    packets: list[tuple[int, int, bool]] = field(default_factory=list)  # (pts, duration, keyframe)


@dataclass
class MediaInfo:
    """What a probe learns about a file."""

    path: str
    duration: float  # seconds, of the longest stream
    has_video: bool
    has_audio: bool
    width: int = 0  # as displayed, i.e. after rotation
    height: int = 0
    rotation: int = 0  # degrees, from the display matrix
    video_codec: str | None = None
    audio_codec: str | None = None
    frame_times: list[float] = field(default_factory=list)  # presentation times, sorted
    keyframe_times: list[float] = field(default_factory=list)

    @property
    def num_frames(self) -> int:
        return len(self.frame_times)


@dataclass
class Frames:
    """Sampled frames as RGB uint8 ``(n, size, size, 3)`` and their times in seconds."""

    frames: np.ndarray
    timestamps: list[float]
    mode: str  # "all", "full" or "keyframe"


def ffmpeg_exe() -> str:
    """The ffmpeg binary: ``$AVCHAT_FFMPEG``, else the system's, else imageio-ffmpeg's."""
    exe = os.environ.get("AVCHAT_FFMPEG") or shutil.which("ffmpeg")
    if exe:
        return exe
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def _compile(stream, *global_args: str) -> list[str]:
    # ffmpeg-python appends global options after the output, where new ffmpeg rejects them.
    return [ffmpeg_exe(), "-hide_banner", "-nostdin", *global_args, *stream.get_args()]


@dataclass
class FfmpegJob:
    """One ffmpeg run: its command line, what it does (for messages) and how its output is read.
    The blocking runner here and the service's asyncio runner both execute these."""

    args: list[str]
    what: str
    parse: Callable[[int, bytes, bytes], Any]  # (returncode, stdout, stderr) -> result


def timeout_error(path: str, timeout: float, what: str) -> MediaError:
    return MediaError(f"{os.path.basename(path)}: ffmpeg took longer than {timeout:.0f} s to {what}; "
                      "the file is too long or damaged")


def run_job(job: FfmpegJob, path: str, timeout: float):
    try:
        proc = subprocess.run(job.args, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise timeout_error(path, timeout, job.what) from None
    return job.parse(proc.returncode, proc.stdout, proc.stderr)


def _error_summary(stderr: bytes) -> str:
    lines = [ln.strip() for ln in stderr.decode("utf-8", "replace").splitlines() if ln.strip()]
    useful = [ln for ln in lines if not ln.startswith(("ffmpeg version", "built with", "configuration:", "lib"))]
    return (useful[-1] if useful else "ffmpeg failed")[:300]


def _check_file(path: str) -> None:
    if not os.path.exists(path):
        raise MediaError(f"{path}: no such file")
    if os.path.isdir(path):
        raise MediaError(f"{path}: is a folder, not a media file")
    if os.path.getsize(path) == 0:
        raise MediaError(f"{os.path.basename(path)}: the file is empty")


# ---------------------------------------------------------------------------------------------
# Probe: one demux-only pass that lists every packet (ffmpeg's framecrc muxer), plus the
# stream description ffmpeg prints on stderr for the rotation.


def probe_command(path: str) -> list[str]:
    source = ffmpeg.input(path)
    return _compile(ffmpeg.output(source["v:0?"], source["a:0?"], "pipe:", format="framecrc", codec="copy"))


_ROTATION_RE = re.compile(r"rotation of (-?[\d.]+) degrees")


def parse_probe(path: str, returncode: int, stdout: bytes, stderr: bytes) -> MediaInfo:
    name = os.path.basename(path)
    if returncode != 0:
        raise MediaError(f"{name}: not a readable media file ({_error_summary(stderr)})")
    if b"partial file" in stderr:
        raise MediaError(f"{name}: the file is truncated (it ends before the data its index points to)")
    streams: dict[int, StreamInfo] = {}
    kinds: dict[int, str] = {}
    dims: dict[int, tuple[int, int]] = {}
    for line in stdout.decode("utf-8", "replace").splitlines():
        if line.startswith("#"):
            m = re.match(r"#(\w+) (\d+): (.*)", line)
            if not m:
                continue
            key, idx, value = m.group(1), int(m.group(2)), m.group(3).strip()
            if key == "tb":
                num, den = value.split("/")
                streams[idx] = StreamInfo(codec="", time_base=(int(num), int(den)))
            elif key == "media_type":
                kinds[idx] = value
            elif key == "codec_id" and idx in streams:
                streams[idx].codec = value
            elif key == "dimensions":
                w, h = value.split("x")
                dims[idx] = (int(w), int(h))
            continue
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 5 or not parts[0].isdigit():
            continue
        idx, pts, duration = int(parts[0]), int(parts[2]), int(parts[3])
        flags = 0x1
        for extra in parts[6:]:
            if extra.startswith("F="):
                flags = int(extra[2:], 16)
        if flags & _DISCARD_FLAG or idx not in streams:
            continue
        streams[idx].packets.append((pts, duration, bool(flags & 0x1)))

    video = next((i for i, k in kinds.items() if k == "video" and streams.get(i) and streams[i].packets), None)
    audio = next((i for i, k in kinds.items() if k == "audio" and streams.get(i) and streams[i].packets), None)
    if video is None and audio is None:
        raise MediaError(f"{name}: no usable audio or video stream (not a media file, or truncated)")

    info = MediaInfo(path=path, duration=0.0, has_video=video is not None, has_audio=audio is not None)
    for idx in (video, audio):
        if idx is None:
            continue
        s = streams[idx]
        tb = s.time_base[0] / s.time_base[1]
        start = min(p[0] for p in s.packets)
        end = max(p[0] + max(p[1], 0) for p in s.packets)
        info.duration = max(info.duration, (end - start) * tb)
        if idx == video:
            info.video_codec = s.codec
            info.frame_times = sorted(p[0] * tb for p in s.packets)
            info.keyframe_times = sorted(p[0] * tb for p in s.packets if p[2])
            if info.duration == 0.0:  # single frame without a duration
                info.duration = 1 / 25
        else:
            info.audio_codec = s.codec
    if video is not None:
        w, h = dims.get(video, (0, 0))
        m = _ROTATION_RE.search(stderr.decode("utf-8", "replace"))
        info.rotation = int(round(float(m.group(1)))) % 360 if m else 0
        info.width, info.height = (h, w) if info.rotation in (90, 270) else (w, h)
    return info


def probe_job(path: str) -> FfmpegJob:
    return FfmpegJob(probe_command(path), "read the file", lambda rc, out, err: parse_probe(path, rc, out, err))


def probe(path: str, timeout: float = DEFAULT_TIMEOUT_S) -> MediaInfo:
    """Lists the streams and every video packet's time without decoding anything."""
    _check_file(path)
    return run_job(probe_job(path), path, timeout)


# ---------------------------------------------------------------------------------------------
# Frame sampling


@dataclass
class SamplingPlan:
    mode: str  # "all", "full" or "keyframe"
    wanted: list[float]  # distinct frame times to decode, sorted
    order: list[int]  # for each output sample, its index into `wanted`


def segment_targets(start: float, duration: float, n: int) -> list[float]:
    """The middle of each of ``n`` equal segments of ``[start, start + duration)``."""
    return [start + (i + 0.5) * duration / n for i in range(n)]


def _nearest(sorted_times: list[float], t: float) -> float:
    i = bisect.bisect_left(sorted_times, t)
    candidates = sorted_times[max(i - 1, 0): i + 1]
    return min(candidates, key=lambda c: (abs(c - t), c))


def plan_sampling(info: MediaInfo, n: int) -> SamplingPlan:
    """Chooses which frames to decode for ``n`` uniform samples, and how."""
    if not info.has_video:
        raise MediaError(f"{os.path.basename(info.path)}: has no video stream")
    times = info.frame_times
    if len(times) <= n:
        return SamplingPlan("all", list(times), list(range(len(times))))
    start = times[0]
    span = info.duration
    targets = segment_targets(start, span, n)
    half = span / (2 * n)
    keys = info.keyframe_times
    if len(keys) >= n:
        chosen = [_nearest(keys, t) for t in targets]
        if all(-half <= c - t < half for c, t in zip(chosen, targets)):
            return _plan("keyframe", chosen)
    return _plan("full", [_nearest(times, t) for t in targets])


def _plan(mode: str, chosen: list[float]) -> SamplingPlan:
    wanted = sorted(set(chosen))
    index = {t: i for i, t in enumerate(wanted)}
    return SamplingPlan(mode, wanted, [index[c] for c in chosen])


def _select_expr(wanted: list[float]) -> str:
    # Frames are matched by time with a tolerance below half the closest spacing, so the
    # expression is immune to the time base ffmpeg's filters use.
    gaps = [b - a for a, b in zip(wanted, wanted[1:]) if b > a]
    eps = min([1e-3] + [g / 3 for g in gaps])
    terms = [f"lt(abs(t-{t:.6f}),{eps:.6g})" for t in wanted]
    # ffmpeg's expression parser nests one level per "+", and gives up near 100: sum in groups.
    while len(terms) > 10:
        terms = ["(" + "+".join(terms[k:k + 10]) + ")" for k in range(0, len(terms), 10)]
    return "+".join(terms)


def frames_command(path: str, plan: SamplingPlan, size: int) -> list[str]:
    input_opts = {"copyts": None}
    if plan.mode == "keyframe":
        input_opts["skip_frame"] = "nokey"
    stream = ffmpeg.input(path, **input_opts).video
    if plan.mode != "all":
        stream = stream.filter("select", _select_expr(plan.wanted))
    stream = stream.filter("showinfo").filter("scale", size, size, flags="bicubic")
    out = stream.output("pipe:", format="rawvideo", pix_fmt="rgb24", fps_mode="passthrough", an=None)
    return _compile(out, "-loglevel", "info")


_PTS_TIME_RE = re.compile(r"\bpts_time:\s*(-?[\d.]+)")


def assemble_frames(path: str, plan: SamplingPlan, raw: bytes, times: list[float], size: int,
                    returncode: int, stderr: bytes) -> Frames:
    """Turns ffmpeg's raw output into the sampled frames, in target order."""
    frame_bytes = size * size * 3
    count = len(raw) // frame_bytes
    if count == 0:
        raise MediaError(f"{os.path.basename(path)}: no video frame could be decoded "
                         f"({_error_summary(stderr) if returncode else 'corrupt video stream'})")
    decoded = np.frombuffer(raw[: count * frame_bytes], dtype=np.uint8).reshape(count, size, size, 3)
    times = times[:count] if len(times) >= count else list(plan.wanted[:count])
    if count == len(plan.wanted):
        picks = plan.order
    else:  # some frames were undecodable: map each target to the nearest frame we did get
        picks = [min(range(count), key=lambda j: abs(times[j] - plan.wanted[i])) for i in plan.order]
    return Frames(frames=decoded[picks], timestamps=[times[j] for j in picks], mode=plan.mode)


def sample_frames(path: str, n: int = 100, size: int = 384, timeout: float = DEFAULT_TIMEOUT_S,
                  info: MediaInfo | None = None) -> Frames:
    """Samples ``n`` frames uniformly (all of them when the clip has fewer) as RGB arrays."""
    return run_job(frames_job(path, info or probe(path, timeout), n, size), path, timeout)


def frames_job(path: str, info: MediaInfo, n: int, size: int) -> FfmpegJob:
    """Plans the sampling and returns the one decode pass that does it."""
    plan = plan_sampling(info, n)
    return FfmpegJob(frames_command(path, plan, size), "decode the video",
                     lambda rc, out, err: assemble_frames(path, plan, out, showinfo_times(err), size, rc, err))


def showinfo_times(stderr: bytes) -> list[float]:
    """Presentation times of the frames ffmpeg's ``showinfo`` filter reported, in output order."""
    text = stderr.decode("utf-8", "replace")
    return [float(m.group(1)) for line in text.splitlines() if "Parsed_showinfo" in line
            for m in [_PTS_TIME_RE.search(line)] if m]


# ---------------------------------------------------------------------------------------------
# Audio


def audio_command(path: str, max_seconds: float | None, sample_rate: int = AUDIO_SAMPLE_RATE) -> list[str]:
    opts = {"format": "f32le", "ac": 1, "ar": sample_rate, "map": "0:a:0", "vn": None}
    if max_seconds is not None:
        opts["t"] = f"{max_seconds:g}"
    return _compile(ffmpeg.input(path).output("pipe:", **opts))


def parse_audio(path: str, returncode: int, stdout: bytes, stderr: bytes) -> np.ndarray:
    if returncode != 0 and not stdout:
        raise MediaError(f"{os.path.basename(path)}: the audio could not be decoded ({_error_summary(stderr)})")
    return np.frombuffer(stdout[: len(stdout) // 4 * 4], dtype=np.float32).copy()


def extract_audio(path: str, max_seconds: float | None = 30.0, timeout: float = DEFAULT_TIMEOUT_S,
                  info: MediaInfo | None = None) -> np.ndarray | None:
    """16 kHz mono float32 PCM of the first ``max_seconds``; ``None`` when there is no audio."""
    info = info or probe(path, timeout)
    if not info.has_audio:
        return None
    return run_job(audio_job(path, max_seconds), path, timeout)


def audio_job(path: str, max_seconds: float | None) -> FfmpegJob:
    return FfmpegJob(audio_command(path, max_seconds), "decode the audio",
                     lambda rc, out, err: parse_audio(path, rc, out, err))


@dataclass
class Media:
    """Everything the processor needs from one file."""

    info: MediaInfo
    frames: Frames | None
    audio: np.ndarray | None


def load_media(path: str, num_frames: int = 100, size: int = 384, audio_seconds: float = 30.0,
               use_video: bool = True, use_audio: bool = True, timeout: float = DEFAULT_TIMEOUT_S) -> Media:
    """Probes once, then decodes the frames and the audio the caller asked for."""
    info = probe(path, timeout)
    frames = sample_frames(path, num_frames, size, timeout, info) if use_video and info.has_video else None
    audio = extract_audio(path, audio_seconds, timeout, info) if use_audio and info.has_audio else None
    if frames is None and audio is None:
        wanted = " or ".join(s for s, u in (("video", use_video), ("audio", use_audio)) if u)
        raise MediaError(f"{os.path.basename(path)}: has no {wanted} stream to use")
    return Media(info=info, frames=frames, audio=audio)


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
