"""The ffmpeg jobs that decode a file's frames and audio (after the probe, ``probe.py``), chosen
so that timestamps never have to match exactly.

* Frame sampling (Video-ChatGPT's rule): one frame from the middle of each of ``n`` equal
  segments of the video stream (inside the requested window), or every frame when there are
  fewer. Frames are chosen by their index in presentation order, never by matching timestamps,
  so files whose timestamps start late, go negative or are shifted by the container decode
  the same:

  * ``full`` mode decodes the whole stream and ffmpeg's ``select`` keeps the chosen indices;
    frames are scaled inside ffmpeg, so source-resolution frames never reach Python.
  * ``keyframe`` mode is used when keyframes are denser than the targets (long clips) and each
    target's nearest keyframe lies inside its own segment: the decoder skips non-key frames. It
    must produce exactly the keyframes the probe listed (open-GOP streams may not); when it
    does not, the job asks for a full decode instead.
  * ``all`` mode: the clip has no more frames than wanted; ``image``: a still image.

  Rotation metadata is honoured by ffmpeg's autorotation, so frames come out upright.
* Audio: 16 kHz mono float32 from the window's start, one Whisper window long.

    python -m model.decoding clip.mp4      # prints the probe and the sampling plan
"""

from __future__ import annotations

import bisect
import sys
from dataclasses import dataclass

import numpy as np

from .ffmpeg import FfmpegJob, JobOutput, command, error_summary, input_args, out_of_memory
from .media import AUDIO_SAMPLE_RATE, Frames, MediaError, MediaInfo, MediaLimitError, MediaLimits, Span, whole
from .probe import probe

# -- frame sampling ------------------------------------------------------------------------------


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


def plan_sampling(info: MediaInfo, n: int, span: Span | None = None) -> SamplingPlan:
    """Chooses which frames to decode for ``n`` uniform samples of ``span`` (None: the whole
    file, every frame of a clip with no more than ``n``), and how."""
    if not info.has_video:
        raise MediaError("has no video stream", info.path)
    times = info.frame_times
    if info.is_image:
        return SamplingPlan("image", [0], [0], [0.0])
    if span is None and len(times) <= n:
        return SamplingPlan("all", list(range(len(times))), list(range(len(times))), list(times))
    start, end, lo, hi = _video_span(info, span)
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
        terms = ["(" + "+".join(terms[k : k + 10]) + ")" for k in range(0, len(terms), 10)]
    return "+".join(terms)


_SHOWINFO = "pts_time:"  # on the one line showinfo prints per frame


def frames_job(
    path: str,
    info: MediaInfo,
    n: int,
    size: int,
    limits: MediaLimits,
    span: Span | None = None,
    plan: SamplingPlan | None = None,
) -> FfmpegJob:
    """The one decode pass that takes the planned frames, scaled to ``size`` x ``size``; refuses,
    before it runs, a plan that would decode more pixels than the budget."""
    plan = plan or plan_sampling(info, n, span)
    cost = decoded_frames(info, plan) * info.width * info.height
    if cost > limits.max_decode_pixels:
        raise MediaLimitError(
            f"sampling its frames means decoding {decoded_frames(info, plan)} frames of {info.width}x{info.height} "
            f"({cost / 1e6:,.0f} M pixels), over this service's limit of {limits.max_decode_pixels / 1e6:,.0f} M "
            "pixels per file (AVCHAT_MAX_DECODE_PIXELS); send a shorter or smaller clip, or pick a window "
            "with start/end",
            path,
        )
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
    args = command(
        "-filter_threads",
        str(limits.threads),
        *input_args(path, limits, info.forced_format, *decoder),
        "-map",
        "0:V:0",
        "-vf",
        ",".join(filters),
        "-fps_mode",
        "passthrough",
        *stop,
        "-an",
        "-f",
        "rawvideo",
        "-pix_fmt",
        "rgb24",
        "pipe:",
        loglevel="info" if plan.mode == "keyframe" else "error",
    )

    def parse(out: JobOutput) -> Frames | FfmpegJob:
        if plan.mode == "keyframe" and out.marks[_SHOWINFO] != len(info.keyframe_times) and out.returncode == 0:
            # The decoder skipped keyframes the probe listed (open GOP), so indices would not match:
            # the caller runs this full decode instead.
            return frames_job(path, info, n, size, limits, span, _full_plan(info, n, span))
        return assemble_frames(path, plan, out, size)

    return FfmpegJob(
        args,
        "decode the video",
        parse,
        limits,
        max_stdout=count * size * size * 3,
        markers=(_SHOWINFO,),
        cost=cost,
    )


def decoded_frames(info: MediaInfo, plan: SamplingPlan) -> int:
    """Frames ffmpeg decodes for a plan: every keyframe in keyframe mode, else every frame up to
    the last one wanted (the decoder starts at the beginning of the stream)."""
    if plan.mode == "keyframe":
        return len(info.keyframe_times)
    if plan.mode == "image":
        return 1
    return (plan.wanted[-1] + 1) if plan.wanted else 0


def _full_plan(info: MediaInfo, n: int, span: Span | None) -> SamplingPlan:
    start, end, lo, hi = _video_span(info, span)
    times = info.frame_times
    if hi - lo <= n:
        return _plan("full", list(range(lo, hi)), times)
    return _plan("full", [_nearest(times, t, lo, hi) for t in segment_targets(start, end - start, n)], times)


def _video_span(info: MediaInfo, span: Span | None) -> tuple[float, float, int, int]:
    """The part of the video stream inside the span: (start, end) in seconds and the range of
    frame indices in it (at least one frame: the nearest)."""
    w_start, w_end = (span or whole(info)).start, (span or whole(info)).end
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
    frame_bytes = size * size * 3
    count = len(out.stdout) // frame_bytes
    if count == 0:
        if out_of_memory(out.stderr):
            raise MediaLimitError(
                "decoding the video needs more memory than ffmpeg is allowed (AVCHAT_FFMPEG_MEMORY_BYTES)", path
            )
        if out.returncode != 0:
            raise MediaError(f"the video stream could not be decoded ({error_summary(out.stderr, path)})", path)
        raise MediaError("the video stream is corrupt: ffmpeg decoded no frame from it", path)
    decoded = np.frombuffer(out.stdout[: count * frame_bytes], dtype=np.uint8).reshape(count, size, size, 3)
    # Frames come out in index order; if the decoder lost some at the end, later targets take the last one.
    picks = [min(k, count - 1) for k in plan.order]
    return Frames(frames=decoded[picks], timestamps=[plan.times[k] for k in picks], mode=plan.mode)


# -- audio -----------------------------------------------------------------------------------------


def audio_job(path: str, info: MediaInfo, limits: MediaLimits, max_seconds: float | None, span: Span) -> FfmpegJob:
    """16 kHz mono float32 PCM of ``max_seconds`` (None: all of it) from the span's start."""
    seconds = span.duration if max_seconds is None else min(max_seconds, span.duration)
    seek = ["-ss", f"{span.start:.3f}"] if span.start > 0 else []
    args = command(
        *input_args(path, limits, info.forced_format, *seek),
        "-map",
        "0:a:0",
        "-vn",
        "-t",
        f"{seconds:.3f}",
        "-ac",
        "1",
        "-ar",
        str(AUDIO_SAMPLE_RATE),
        "-f",
        "f32le",
        "pipe:",
    )
    return FfmpegJob(
        args,
        "decode the audio",
        lambda out: parse_audio(path, out),
        limits,
        max_stdout=int((seconds + 1) * AUDIO_SAMPLE_RATE * 4),
    )


def parse_audio(path: str, out: JobOutput) -> np.ndarray:
    if out.returncode != 0 and not out.stdout:
        if out_of_memory(out.stderr):
            raise MediaLimitError(
                "decoding the audio needs more memory than ffmpeg is allowed (AVCHAT_FFMPEG_MEMORY_BYTES)", path
            )
        raise MediaError(f"the audio could not be decoded ({error_summary(out.stderr, path)})", path)
    return np.frombuffer(out.stdout[: len(out.stdout) // 4 * 4], dtype=np.float32).copy()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    for path in argv:
        try:
            info = probe(path)
        except MediaError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(
            f"{path}: {info.duration:.3f} s, video={info.video_codec} {info.width}x{info.height} "
            f"rot={info.rotation} frames={info.num_frames} keyframes={len(info.keyframe_times)}, "
            f"audio={info.audio_codec}"
        )
        if info.has_video:
            plan = plan_sampling(info, 100)
            print(f"  sampling: mode={plan.mode}, {len(plan.wanted)} distinct frames")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
