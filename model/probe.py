"""The probe: one demux-only pass of ffmpeg (its framecrc muxer: every packet listed, nothing
decoded), parsed as it streams and refused as soon as it passes the packet budget, plus the
stream description ffmpeg prints on stderr for the rotation."""

from __future__ import annotations

import re

from .ffmpeg import FfmpegJob, JobOutput, command, error_summary, input_args, out_of_memory, run_job
from .media import MediaError, MediaInfo, MediaLimitError, MediaLimits, NotAContainerError, check_file

_NOPTS = -(2**63)
_KEY, _DISCARD = 0x1, 0x4  # AV_PKT_FLAG_KEY, AV_PKT_FLAG_DISCARD (packets an edit list hides)


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
        self.packets: dict[int, list[tuple[int, int, bool]]] = {}  # video: (pts, duration, key) of each
        self.spans: dict[int, list[int]] = {}  # every stream: [first pts, last pts + duration, packets]
        self.count = 0

    def feed(self, data: bytes) -> None:
        text = self.partial + data
        cut = text.rfind(b"\n")
        if cut < 0:
            self.partial = text
            return
        self.partial = text[cut + 1 :]
        for line in text[:cut].decode("ascii", "replace").split("\n"):
            if line.startswith("#"):
                self._header(line)
            elif line:
                self._packet(line)

    def _header(self, line: str) -> None:
        m = re.match(r"#(\w+) (\d+): (.*)", line)
        if not m:
            return
        key, idx, value = m.group(1), int(m.group(2)), m.group(3).strip()
        if key == "tb":
            num, den = value.split("/")
            self.time_base[idx] = (int(num), int(den))
        elif key == "media_type":
            self.kinds[idx] = value
            if value == "video":
                self.packets[idx] = []
        elif key == "codec_id":
            self.codecs[idx] = value
        elif key == "dimensions":
            w, h = value.split("x")
            self.dims[idx] = (int(w), int(h))

    def _packet(self, line: str) -> None:
        parts = line.split(",", 6)
        if len(parts) < 5 or not parts[0].isdigit():
            return
        self.count += 1
        if self.count > self.limits.max_packets:
            raise MediaLimitError(
                f"the file has more than {self.limits.max_packets} packets, over this service's limit "
                "(AVCHAT_MAX_PACKETS)",
                self.path,
            )
        idx, dts, pts, duration = int(parts[0]), int(parts[1]), int(parts[2]), int(parts[3])
        flags = _KEY
        if len(parts) > 6 and parts[6].startswith(" F=0x"):
            flags = int(parts[6][5:].split(",", 1)[0], 16)
        if flags & _DISCARD or idx not in self.time_base:
            return
        pts = dts if pts == _NOPTS else pts
        span = self.spans.get(idx)
        if span is None:
            self.spans[idx] = [pts, pts + max(duration, 0), 1]
        else:
            span[0], span[1], span[2] = min(span[0], pts), max(span[1], pts + max(duration, 0)), span[2] + 1
        if idx in self.packets:
            self.packets[idx].append((pts, duration, bool(flags & _KEY)))

    def finish(self, out: JobOutput) -> MediaInfo:
        path = self.path
        if self.partial:
            self.feed(b"\n")
        if out.returncode != 0:
            if "Format not on whitelist" in out.stderr:
                raise NotAContainerError(
                    "not a video container this service opens (it takes mp4/mov, "
                    "mkv/webm, avi, flv, mpeg-ts, ogg, wav, mp3, flac, aac and still images)",
                    path,
                )
            if out_of_memory(out.stderr):
                raise MediaLimitError("reading the file needs more memory than ffmpeg is allowed", path)
            raise MediaError(f"not a readable media file ({error_summary(out.stderr, path)})", path)
        if out.marks.get("partial file"):
            raise MediaError("the file is truncated (it ends before the data its index points to)", path)
        video = next((i for i, k in self.kinds.items() if k == "video" and self.packets.get(i)), None)
        audio = next((i for i, k in self.kinds.items() if k == "audio" and i in self.spans), None)
        if video is None and audio is None:
            raise MediaError("no usable audio or video stream (not a media file, or truncated)", path)
        spans = {}
        for idx in (video, audio):
            if idx is not None:
                num, den = self.time_base[idx]
                first, end, _ = self.spans[idx]
                spans[idx] = (first * num / den, end * num / den)
        origin = min(s for s, _ in spans.values())
        info = MediaInfo(
            path=self.path,
            duration=max(e for _, e in spans.values()) - origin,
            has_video=video is not None,
            has_audio=audio is not None,
        )
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

    args = command(
        *input_args(path, limits, forced),
        "-map",
        "0:V:0?",
        "-map",
        "0:a:0?",
        "-c",
        "copy",
        "-f",
        "framecrc",
        "pipe:",
        loglevel="info",
    )
    return FfmpegJob(args, "read the file", parse, limits, consume=parser.feed, markers=("partial file",))


def probe(path: str, limits: MediaLimits | None = None) -> MediaInfo:
    """Lists the streams and every video packet's time without decoding anything."""
    limits = limits or MediaLimits.from_env()
    return run_job(probe_job(path, limits, check_file(path, limits)), path)
