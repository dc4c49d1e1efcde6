"""What a media file is, before and after ffmpeg reads it: the errors anything wrong with it
raises, the budgets a file must fit, what a probe learns (:class:`MediaInfo`), the window a
request analyses, and the first-bytes check that refuses playlists and manifests before ffmpeg
sees them.

The rest of the media path: ``ffmpeg.py`` runs ffmpeg safely (allow-lists, caps, timeout);
``probe.py`` lists a file's packets; ``decoding.py`` plans the frame sampling and holds the
frame and audio jobs; ``pipeline.py`` composes them into ``decode()``.
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass, field

import numpy as np

from .errors import InvalidWindow, MediaError, MediaLimitError, MissingStream, NotAContainerError

AUDIO_SAMPLE_RATE = 16_000
IMAGE_CODECS = {"png", "mjpeg", "webp", "bmp", "gif"}


# The errors live in errors.py (no torch there); they are part of this module's interface too.
__all__ = ["InvalidWindow", "MediaError", "MediaLimitError", "MissingStream", "NotAContainerError"]


def _env_number(name: str, default: float | None) -> float | None:
    value = os.environ.get(name, "").strip()
    return float(value) if value else default


@dataclass(frozen=True)
class MediaLimits:
    """Budgets for one file, the same for every caller (the command line, training, the
    service). :meth:`from_env` is the one reader of their ``AVCHAT_*`` variables; the defaults
    are the fields' own."""

    max_pixels: int = 4096 * 4096
    """Largest frame (width x height) that is decoded at all (AVCHAT_MAX_PIXELS)."""
    max_decode_pixels: int = 2**35
    """Most pixels one file's frame decode may produce, frames x width x height, counted from
    the plan before ffmpeg starts (AVCHAT_MAX_DECODE_PIXELS; about 10 minutes of 1080p30 decoded
    whole)."""
    max_packets: int = 1_000_000
    """Most packets (video + audio) a file may have (AVCHAT_MAX_PACKETS)."""
    max_seconds: float | None = 3600.0
    """Longest file accepted (AVCHAT_MAX_VIDEO_SECONDS); 0 or None: no limit."""
    threads: int = 2
    """Threads per ffmpeg process (AVCHAT_FFMPEG_THREADS)."""
    memory_bytes: int = 2 * 1024**3
    """Address-space cap of each ffmpeg process (AVCHAT_FFMPEG_MEMORY_BYTES)."""
    timeout: float = 120.0
    """Seconds one ffmpeg process may run (AVCHAT_FFMPEG_TIMEOUT_S)."""

    ENV = {
        "max_pixels": "AVCHAT_MAX_PIXELS",
        "max_decode_pixels": "AVCHAT_MAX_DECODE_PIXELS",
        "max_packets": "AVCHAT_MAX_PACKETS",
        "max_seconds": "AVCHAT_MAX_VIDEO_SECONDS",
        "threads": "AVCHAT_FFMPEG_THREADS",
        "memory_bytes": "AVCHAT_FFMPEG_MEMORY_BYTES",
        "timeout": "AVCHAT_FFMPEG_TIMEOUT_S",
    }

    def __post_init__(self):
        if not self.max_seconds:  # 0 turns the limit off
            object.__setattr__(self, "max_seconds", None)

    @classmethod
    def from_env(cls) -> MediaLimits:
        values = {}
        for name, variable in cls.ENV.items():
            default = getattr(cls, name)
            value = _env_number(variable, default)
            values[name] = value if isinstance(default, float) or value is None else int(value)
        return cls(**values)


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


MAX_SECONDS = 1e7  # a window bound past this is not a time in any real file


@dataclass(frozen=True)
class Span:
    """A window resolved against one file: seconds from the start of the file, inside it."""

    start: float
    end: float

    @property
    def duration(self) -> float:
        return self.end - self.start


@dataclass(frozen=True)
class Window:
    """The span a request asks to analyse, in seconds from the start of the file; ``end`` None:
    to the end. Checked on its own when made, and against the file once, by :meth:`resolve`."""

    start: float = 0.0
    end: float | None = None

    def __post_init__(self):
        if not (math.isfinite(self.start) and 0 <= self.start <= MAX_SECONDS):
            raise InvalidWindow(f"start ({self.start:g} s) must be a time from 0 to {MAX_SECONDS:g} s")
        if self.end is not None and not (math.isfinite(self.end) and self.start < self.end <= MAX_SECONDS):
            raise InvalidWindow(f"end ({self.end:g} s) must come after start ({self.start:g} s)")

    @classmethod
    def of(cls, start: float | None, end: float | None) -> Window | None:
        """The window of optional start/end fields (None when neither is given)."""
        if start is None and end is None:
            return None
        return cls(float(start or 0.0), None if end is None else float(end))

    def resolve(self, info: MediaInfo) -> Span:
        """The span of this file the window covers: an end past the file's is the file's end (as
        a slice is; the media report says what was analysed), a start past it is refused."""
        if self.start >= info.duration:
            raise InvalidWindow(f"start ({self.start:g} s) is past the end of the file ({info.duration:.2f} s)")
        return Span(self.start, info.duration if self.end is None else min(self.end, info.duration))


def whole(info: MediaInfo) -> Span:
    return Span(0.0, info.duration)


def check_budget(info: MediaInfo, limits: MediaLimits) -> None:
    """Refuses, before any decode, a file over the pixel or duration budget."""
    if info.width * info.height > limits.max_pixels:
        raise MediaLimitError(
            f"its frames are {info.width}x{info.height} pixels, over this service's limit "
            f"of {limits.max_pixels} pixels per frame (AVCHAT_MAX_PIXELS)",
            info.path,
        )
    if limits.max_seconds is not None and info.duration > limits.max_seconds:
        raise MediaLimitError(
            f"the file is {info.duration:.0f} s long; this service takes at most "
            f"{limits.max_seconds:.0f} s (AVCHAT_MAX_VIDEO_SECONDS)",
            info.path,
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


MAX_IMAGE_TEXT_BYTES = 64 * 1024  # compressed PNG text and profile chunks, which ffmpeg inflates


def check_file(path: str, limits: MediaLimits | None = None) -> str | None:
    """Refuses what is not a media file before ffmpeg sees it; returns the demuxer to force for
    a still image (None otherwise)."""
    if not os.path.exists(path):
        raise MediaError("no such file", path)
    if os.path.isdir(path):
        raise MediaError("is a folder, not a media file", path)
    if os.path.getsize(path) == 0:
        raise MediaError("the file is empty", path)
    with open(path, "rb") as f:
        head = f.read(8192)
    for test, what in _POINTERS:
        if test(head):
            raise NotAContainerError(
                f"the file is {what}, which points at other files, not a video; send the video file itself", path
            )
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp_pipe"
    forced = next(
        (fmt for magic, fmt in _IMAGES if head.startswith(magic) and (fmt != "bmp_pipe" or len(head) > 26)), None
    )
    if forced == "png_pipe":
        _check_png(path, limits or MediaLimits())
    return forced


def _check_png(path: str, limits: MediaLimits) -> None:
    """A PNG's size from its header, and its compressed ancillary chunks (zTXt, iTXt, iCCP, which
    inflate up to 1000x), against the budgets, by walking its chunk headers."""
    inflating = 0
    with open(path, "rb") as f:
        f.seek(8)
        while header := f.read(8):
            if len(header) < 8:
                return  # truncated: ffmpeg says so
            length, kind = struct.unpack(">I4s", header)
            if kind == b"IHDR":
                width, height = struct.unpack(">II", f.read(8))
                if width * height > limits.max_pixels:
                    raise MediaLimitError(
                        f"the image is {width}x{height} pixels, over this service's limit of "
                        f"{limits.max_pixels} pixels per frame (AVCHAT_MAX_PIXELS)",
                        path,
                    )
                length -= 8
            elif kind in (b"zTXt", b"iTXt", b"iCCP"):
                inflating += length
                if inflating > MAX_IMAGE_TEXT_BYTES:
                    raise MediaLimitError(
                        f"the image carries more than {MAX_IMAGE_TEXT_BYTES // 1024} KiB of compressed "
                        "text or colour-profile chunks; strip its metadata and send it again",
                        path,
                    )
            elif kind == b"IEND":
                return
            f.seek(length + 4, os.SEEK_CUR)  # the data and its CRC
