"""The media pipeline, one path for every caller::

    decode(path)  -> Media              frames + 16 kHz audio (ffmpeg; one probe)
    preprocess    -> MediaTensors       SigLIP pixels (F, 3, S, S), Whisper log-mel (80, 3000)
    encode        -> EncoderFeatures    pooled SigLIP tokens (T + P, Cv), Whisper read-out (64, Ca)
                                        (the frozen encoders' output: what training caches to disk)
    project       -> MediaEmbeddings    (829, H), (64, H): what the service keeps per video
    prompt        -> Prompt             token ids with the placeholders expanded, token counts
                                        (one block of placeholders per medium: :class:`Part`)

The command line, the service, training data, the feature-cache builder and both evaluators
compose these stages and nothing else. :func:`decode_steps` is the decode sequence as a
generator of ffmpeg jobs, so a blocking caller (:func:`decode`) and the service's asyncio
runner execute the very same steps.

A stream the file lacks is simply absent from every stage: a video without a sound track gets
no audio features and no ``<audio>`` placeholder (never silence).
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from . import modalities as _modalities
from .config import AVChatConfig
from .decoding import audio_job, frames_job
from .errors import ContextLengthError
from .ffmpeg import FfmpegJob, run_job
from .media import (
    AUDIO_SAMPLE_RATE,
    Frames,
    MediaInfo,
    MediaLimits,
    MissingStream,
    Window,
    check_budget,
    check_file,
    whole,
)
from .probe import probe_job
from .processor import Block


@dataclass
class MediaReport:
    """What the model saw and heard of a file (the API's ``media`` object)."""

    duration_s: float  # the span analysed
    frames: int  # frames sampled
    audio_s: float  # seconds of audio the model heard
    audio_truncated_s: float  # seconds of the span's audio beyond the Whisper windows it heard

    def as_dict(self) -> dict:
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in vars(self).items()}

    def heard_in(self, windows: int, window_s: float) -> MediaReport:
        """The report when a prompt holds only the first ``windows`` windows of the audio."""
        heard = min(self.audio_s, windows * window_s)
        return MediaReport(self.duration_s, self.frames, heard, self.audio_truncated_s + self.audio_s - heard)


@dataclass
class Media:
    """Decoded media of one file: what :func:`preprocess` needs."""

    info: MediaInfo
    frames: Frames | None
    audio: np.ndarray | None  # 16 kHz mono float32
    report: MediaReport


@dataclass
class MediaTensors:
    video: torch.Tensor | None  # SigLIP pixel values (F, 3, S, S)
    audio: torch.Tensor | None  # Whisper log-mel (W, 80, 3000): W windows of 30 s


@dataclass
class EncoderFeatures:
    video: torch.Tensor | None  # (num_frames + patches, Cv), before the projector
    audio: torch.Tensor | None  # (audio_tokens, Ca)


@dataclass
class MediaEmbeddings:
    video: torch.Tensor | None  # (video_tokens, H), in the LLM's embedding space
    audio: torch.Tensor | None  # (audio_tokens, H)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.video, self.audio) if t is not None)


# -- decode -----------------------------------------------------------------------------------------


def decode_steps(
    path: str,
    config: AVChatConfig,
    modalities: Sequence[str] | None = None,
    window: Window | None = None,
    limits: MediaLimits | None = None,
) -> Generator[list[FfmpegJob], list, Media]:
    """The decode sequence: yields the ffmpeg jobs of each step, receives their results, and
    returns the :class:`Media`. Only the streams in ``modalities`` (default: what the model was
    trained on) that the file has are decoded."""
    limits = limits or MediaLimits.from_env()
    use = used(modalities, config)
    forced = check_file(path, limits)
    info: MediaInfo = (yield [probe_job(path, limits, forced)])[0]
    check_budget(info, limits)
    span = window.resolve(info) if window is not None else None  # resolved once, passed down
    start, end = (span or whole(info)).start, (span or whole(info)).end
    want_video = "video" in use and info.has_video
    want_audio = "audio" in use and info.has_audio and not info.is_image
    if not want_video and not want_audio:
        have = " and ".join(s for s, h in (("video", info.has_video), ("audio", info.has_audio)) if h) or "nothing"
        raise MissingStream(f"has no {' or '.join(sorted(use)) or 'usable'} stream to use (it has {have})", path)
    jobs = []
    if want_video:
        jobs.append(frames_job(path, info, config.num_frames, config.image_size, limits, span))
    if want_audio:
        heard = config.audio_seconds * config.max_audio_windows  # every window the model takes
        jobs.append(audio_job(path, info, limits, heard, span or whole(info)))
    results = yield jobs
    frames = results[0] if want_video else None
    if isinstance(frames, FfmpegJob):  # the keyframe plan did not hold: the full decode it asked for
        frames = (yield [frames])[0]
    audio = results[-1] if want_audio else None
    span = 0.0 if info.is_image else end - start
    heard_span = max(0.0, min(end, info.audio_end) - max(start, info.audio_start)) if want_audio else 0.0
    heard = min(heard_span, len(audio) / AUDIO_SAMPLE_RATE) if audio is not None else 0.0
    report = MediaReport(
        duration_s=span,
        frames=0 if frames is None else len(frames.timestamps),
        audio_s=heard,
        audio_truncated_s=max(0.0, heard_span - heard),
    )
    return Media(info=info, frames=frames, audio=audio, report=report)


def frames_media(images: Sequence[Media]) -> Media:
    """Still images sent as the sampled frames of one video (what evaluation harnesses send), in
    order: one :class:`Media` whose frames are theirs, encoded as a file's sampled frames are
    (the same temporal and spatial pooling); no sound."""
    stack = np.concatenate([m.frames.frames for m in images])
    frames = Frames(frames=stack, timestamps=[float(i) for i in range(len(stack))], mode="frames")
    report = MediaReport(duration_s=0.0, frames=len(stack), audio_s=0.0, audio_truncated_s=0.0)
    return Media(info=images[0].info, frames=frames, audio=None, report=report)


def run_steps(steps: Generator[list[FfmpegJob], list, Media], path: str) -> Media:
    """Drives :func:`decode_steps` with the blocking runner."""
    try:
        jobs = next(steps)
        while True:
            jobs = steps.send([run_job(job, path) for job in jobs])
    except StopIteration as done:
        return done.value


def decode(
    path: str,
    config: AVChatConfig,
    modalities: Sequence[str] | None = None,
    window: Window | None = None,
    limits: MediaLimits | None = None,
) -> Media:
    """Probes once, then decodes the frames and the audio the caller asked for."""
    return run_steps(decode_steps(str(path), config, modalities, window, limits), str(path))


# -- preprocess, encode, project ------------------------------------------------------------------


def preprocess(processor, media: Media) -> MediaTensors:
    pixels = processor.pixel_values(media.frames.frames) if media.frames is not None else None
    mel = processor.audio_features(media.audio) if media.audio is not None else None
    return MediaTensors(video=pixels, audio=mel)


@torch.no_grad()  # not inference_mode: training feeds these features to a forward pass with gradients
def encode(model, items: Sequence[MediaTensors]) -> list[EncoderFeatures]:
    """Runs the frozen encoders over several files at once (frames of all videos share SigLIP
    chunks; all clips share one Whisper batch)."""
    device = model.device
    videos = [(i, t.video) for i, t in enumerate(items) if t.video is not None]
    audios = [(i, t.audio) for i, t in enumerate(items) if t.audio is not None]
    out = [EncoderFeatures(None, None) for _ in items]
    if videos:
        pooled = model.pool_video([p.to(device) for _, p in videos])  # (B_v, T + P, Cv)
        for (i, _), feats in zip(videos, pooled):
            out[i].video = feats.clone()
    if audios:
        # Every window of every clip in one Whisper batch, then each clip's windows in time order.
        mels = [m if m.dim() == 3 else m[None] for _, m in audios]  # (W_i, 80, 3000)
        hidden = model.encode_audio(torch.cat(mels).to(device))  # (sum W, 64, Ca)
        for (i, _), feats in zip(audios, hidden.split([m.shape[0] for m in mels])):
            out[i].audio = feats.reshape(-1, feats.shape[-1]).clone()  # (W_i * 64, Ca)
    return out


@torch.inference_mode()
def project(model, features: Sequence[EncoderFeatures]) -> list[MediaEmbeddings]:
    out = []
    for f in features:
        video = model.project_video(f.video[None].to(model.device))[0] if f.video is not None else None
        audio = model.project_audio(f.audio[None].to(model.device))[0] if f.audio is not None else None
        out.append(MediaEmbeddings(video, audio))
    return out


def embed_media(
    model, paths: Sequence[str], modalities: Sequence[str] | None = None, window: Window | None = None
) -> list[tuple[Media, MediaEmbeddings]]:
    """decode -> preprocess -> encode -> project for files on disk (the CLI and the local evaluator)."""
    decoded = [decode(p, model.config, modalities, window) for p in paths]
    features = encode(model, [preprocess(model.processor, m) for m in decoded])
    return list(zip(decoded, project(model, features)))


# -- prompt -----------------------------------------------------------------------------------------


@dataclass
class Prompt:
    ids: list[int]
    labels: list[int]  # -100 except on the answers (training)
    counts: dict[str, int]  # audio / video / text tokens
    blocks: list[Block]  # each medium's placeholders, in the order of the media

    @property
    def audio_windows(self) -> int:
        """Audio placeholders the prompt holds (64 tokens each), all media together."""
        return sum(b.audio_windows for b in self.blocks)

    @property
    def video(self) -> bool:
        return any(b.video for b in self.blocks)

    @property
    def audio(self) -> bool:
        return self.audio_windows > 0


Medium = MediaEmbeddings | EncoderFeatures | MediaTensors  # any stage's output


@dataclass
class Part:
    """One medium of a conversation (any stage's output: its ``video`` / ``audio``), the user
    message it came in (an index into the messages; None: the first user message), and the
    streams of it to use (None: the request's ``modalities``)."""

    media: Medium
    message: int | None = None
    modalities: Sequence[str] | None = None


def parts(media: Medium | Part | Sequence[Medium | Part] | None) -> list[Part]:
    """A prompt's media as a list of :class:`Part` (one medium is a list of one)."""
    if media is None:
        return []
    items = media if isinstance(media, list | tuple) else [media]
    return [m if isinstance(m, Part) else Part(m) for m in items]


def audio_windows(media, config: AVChatConfig) -> int:
    """The audio windows any stage's output holds: log-mel ``(W, 80, 3000)``, or features of
    ``W * 64`` rows (encoder outputs or projected)."""
    audio = getattr(media, "audio", None) if media is not None else None
    if audio is None:
        return 0
    if audio.dim() == 3:
        return audio.shape[0]
    return max(1, audio.shape[0] // config.audio_tokens) if audio.dim() == 2 else 1


def used(modalities: Sequence[str] | None, config: AVChatConfig) -> set[str]:
    """The modalities a request uses: what it asked for, else what the model was trained on."""
    return set(_modalities.check(modalities) if modalities is not None else config.modalities)


def prompt(
    processor,
    messages: list[dict],
    media: Medium | Part | Sequence[Medium | Part] | None,
    modalities: Sequence[str] | None = None,
    max_new_tokens: int = 0,
    add_generation_prompt: bool = True,
    max_audio_windows: int | None = None,
) -> Prompt:
    """Token ids of a chat with one block of placeholders per medium (:func:`parts`, in
    conversation order), for each stream the medium has and the request uses. Each medium's
    audio windows go in, in time order, as many as it has, at most ``max_audio_windows``, and as
    many as fit the context with ``max_new_tokens`` more: over the context, the medium with the
    most windows gives one up first, down to one each (the media report then says what was not
    heard: nothing is dropped silently). Raises ``ContextLengthError`` when it still does not
    fit, and ``MediaError`` when a medium has none of the streams asked for."""
    config = processor.config
    items = parts(media)
    blocks = [_block(part, modalities, config, max_audio_windows, i, len(items)) for i, part in enumerate(items)]
    per_window = config.audio_tokens + 1  # its tokens and the newline after it
    while True:
        try:
            ids, labels, counts = processor.encode_chat(
                messages, blocks, add_generation_prompt=add_generation_prompt, max_new_tokens=max_new_tokens
            )
            return Prompt(ids, labels, counts, blocks)
        except ContextLengthError as exc:
            fewer = _fewer_windows(blocks, -(-exc.over // per_window))  # the fewest windows fewer that fit
            if fewer is None:
                raise
            blocks = fewer


def _block(part: Part, modalities, config: AVChatConfig, most: int | None, i: int, n: int) -> Block:
    use = used(part.modalities if part.modalities is not None else modalities, config)
    media = part.media
    present = {"video": media.video is not None, "audio": media.audio is not None}
    if not any(present[m] for m in use):
        have = " and ".join(m for m in ("video", "audio") if present[m]) or "nothing usable"
        which = f"medium {i + 1} of {n}" if n > 1 else "the file"
        raise MissingStream(f"{which} has no {' or '.join(sorted(use))} stream to use (it has {have})")
    windows = audio_windows(media, config) if "audio" in use else 0
    if most is not None:
        windows = min(windows, max(1, most))
    return Block(windows, present["video"] and "video" in use, part.message)


def _fewer_windows(blocks: list[Block], n: int) -> list[Block] | None:
    """``blocks`` with ``n`` audio windows fewer, taken one at a time from the block that has
    the most (the later one on a tie), none below one; None when not one can go."""
    windows = [b.audio_windows for b in blocks]
    dropped = 0
    while dropped < n:
        most = max(range(len(windows)), key=lambda i: (windows[i], i), default=None)
        if most is None or windows[most] <= 1:
            break
        windows[most] -= 1
        dropped += 1
    if dropped == 0:
        return None
    return [replace(b, audio_windows=w) for b, w in zip(blocks, windows)]


def heard(report: MediaReport, p: Prompt, config: AVChatConfig, index: int = 0) -> MediaReport:
    """``report``, of the prompt's ``index``-th medium, as the prompt lets the model see and hear
    it: only the audio windows its block holds, no frames when its video was left out and no
    audio when its sound was."""
    block = p.blocks[index]
    if block.audio_windows:
        report = report.heard_in(block.audio_windows, config.audio_seconds)
    else:
        report = replace(report, audio_s=0.0, audio_truncated_s=0.0)
    return report if block.video else replace(report, frames=0)


def prompt_embeds(model, p: Prompt, media: Medium | Part | Sequence[Medium | Part] | None) -> torch.Tensor:
    """The prompt embedding matrix ``(T, H)``: what both engines generate from. Each medium's
    embeddings fill its own block (the first windows of its audio, as many as the block holds)."""
    items = parts(media)
    if len(items) != len(p.blocks):
        raise ValueError(f"the prompt has {len(p.blocks)} media blocks, and {len(items)} media came")
    per_window = model.config.audio_tokens
    videos = [part.media.video for part, b in zip(items, p.blocks) if b.video]
    audios = [part.media.audio[: b.audio_windows * per_window] for part, b in zip(items, p.blocks) if b.audio_windows]
    ids = torch.tensor([p.ids], device=model.device)
    video = torch.cat([v.to(model.device) for v in videos]) if videos else None
    audio = torch.cat([a.to(model.device) for a in audios]) if audios else None
    return model.merge_media(ids, video, audio)[0]
