"""What a media file is, before and after ffmpeg reads it: the errors anything wrong with it
raises, the budgets a file must fit, what a probe learns (:class:`MediaInfo`), the window a
request analyses, and the first-bytes check that refuses playlists and manifests before ffmpeg
sees them.

The rest of the media path: ``ffmpeg.py`` runs ffmpeg safely (allow-lists, caps, timeout);
``probe.py`` lists a file's packets; ``decoding.py`` plans the frame sampling and holds the
frame and audio jobs; ``pipeline.py`` composes them into ``decode()``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

AUDIO_SAMPLE_RATE = 16_000
IMAGE_CODECS = {"png", "mjpeg", "webp", "bmp", "gif"}


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
        return cls(
            max_pixels=int(_env_number("AVCHAT_MAX_PIXELS", cls.max_pixels)),
            max_packets=int(_env_number("AVCHAT_MAX_PACKETS", cls.max_packets)),
            max_seconds=float(seconds) if seconds else None,
            threads=int(_env_number("AVCHAT_FFMPEG_THREADS", cls.threads)),
            memory_bytes=int(_env_number("AVCHAT_FFMPEG_MEMORY_BYTES", cls.memory_bytes)),
            timeout=_env_number("AVCHAT_FFMPEG_TIMEOUT_S", cls.timeout),
        )


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
        return (
            self.has_video and self.video_codec in IMAGE_CODECS and (self.num_frames == 1 or self.video_codec == "gif")
        )


@dataclass
class Frames:
    """Sampled frames as RGB uint8 ``(n, size, size, 3)`` and their times in seconds."""

    frames: np.ndarray
    timestamps: list[float]
    mode: str  # "all", "full", "keyframe" or "image"


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


def check_budget(info: MediaInfo, limits: MediaLimits) -> None:
    """Refuses, before any decode, a file over the pixel or duration budget."""
    name = os.path.basename(info.path)
    if info.width * info.height > limits.max_pixels:
        raise MediaLimitError(
            f"{name}: its frames are {info.width}x{info.height} pixels, over this service's limit "
            f"of {limits.max_pixels} pixels per frame (AVCHAT_MAX_PIXELS)"
        )
    if limits.max_seconds is not None and info.duration > limits.max_seconds:
        raise MediaLimitError(
            f"{name}: the file is {info.duration:.0f} s long; this service takes at most "
            f"{limits.max_seconds:.0f} s (AVCHAT_MAX_VIDEO_SECONDS)"
        )


# -- before ffmpeg: the file exists, and what its first bytes say it is ----------------------------

_POINTERS = [  # (test on the first bytes, what the file is)
    (lambda h: h.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"#EXTM3U"), "an HLS playlist (.m3u8)"),
    (lambda h: b"<MPD" in h[:4096], "a DASH manifest (.mpd)"),
    (lambda h: h.lstrip().startswith(b"ffconcat"), "an ffconcat script"),
    (lambda h: h.startswith(b"v=0") and b"\nm=" in h, "an SDP session description"),
    (lambda h: h.lstrip().lower().startswith((b"[playlist]", b"#extm3u")), "a playlist"),
]
_IMAGES = [  # (magic bytes, demuxer): forced, so a file's name never selects ffmpeg's image2 sequences
    (b"\x89PNG\r\n\x1a\n", "png_pipe"),
    (b"\xff\xd8\xff", "jpeg_pipe"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
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
            raise NotAContainerError(
                f"{os.path.basename(path)}: the file is {what}, which points at other files, "
                "not a video; send the video file itself"
            )
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp_pipe"
    return next(
        (fmt for magic, fmt in _IMAGES if head.startswith(magic) and (fmt != "bmp_pipe" or len(head) > 26)), None
    )
