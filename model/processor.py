"""Turns media and a chat into model inputs.

* frames (uint8 RGB) -> SigLIP pixel values: 384 x 384, ``(x / 255 - 0.5) / 0.5``;
* 16 kHz audio -> Whisper log-mel, 80 x 3000 (one 30 s window, padded or cut);
* a chat -> token ids in Bunny's template, each placeholder expanded to its exact token count,
  and labels that mask everything but the answers (and their ``<|endoftext|>``) to -100.

Template (Bunny ``conv_bunny``)::

    {system} USER: <audio>\\n<video>\\n{question} ASSISTANT: {answer}<|endoftext|>USER: {q2} ASSISTANT:

Each medium of a conversation is one :class:`Block` (its audio windows, then its video), at the
start of the user message it came in, in order: one medium in the first message is the layout
the model was trained on; several are each their own block (``<audio>..<video>\\n<audio>..``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from transformers import WhisperFeatureExtractor

from .config import AVChatConfig
from .errors import ContextLengthError, TooManyMessages

__all__ = ["AVChatProcessor", "Block", "ContextLengthError", "IGNORE_INDEX", "add_media_tokens"]

IGNORE_INDEX = -100
EOS = "<|endoftext|>"


@dataclass(frozen=True)
class Block:
    """One medium's placeholders in a prompt: ``audio_windows`` times ``<audio>`` (64 tokens each)
    and a newline, then ``<video>`` (its video tokens) and a newline when ``video``; in the
    user message ``message`` (an index into the messages; None: the first user message)."""

    audio_windows: int = 0
    video: bool = False
    message: int | None = None

    def tokens(self, config: AVChatConfig) -> int:
        return self.audio_windows * config.audio_tokens + self.video * config.video_tokens


def add_media_tokens(tokenizer) -> None:
    """Registers ``<audio>`` and ``<video>`` as special tokens (single ids, never split)."""
    missing = [t for t in ("<audio>", "<video>") if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token


class AVChatProcessor:
    """Tokenizer, chat template and media preprocessing; loadable without the model."""

    def __init__(self, tokenizer, config: AVChatConfig):
        add_media_tokens(tokenizer)
        self.tokenizer = tokenizer
        self.config = config
        self.audio_token_id = tokenizer.convert_tokens_to_ids(config.audio_token)
        self.video_token_id = tokenizer.convert_tokens_to_ids(config.video_token)
        # No token covers more text than the longest one in the vocabulary: text longer than that
        # many characters per free position cannot fit, whatever it says (checked before tokenizing).
        self.max_token_chars = max(1, max((len(t) for t in tokenizer.get_vocab()), default=1))
        self.feature_extractor = WhisperFeatureExtractor(
            feature_size=config.audio_config.num_mel_bins,
            sampling_rate=16_000,
            chunk_length=int(config.audio_seconds),
            hop_length=160,
            n_fft=400,
        )

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> AVChatProcessor:
        """The processor of a checkpoint folder (its config.json and tokenizer files only)."""
        from transformers import AutoTokenizer

        config = AVChatConfig.from_pretrained(folder)
        source = (
            os.path.join(folder, config.tokenizer_name)
            if config.tokenizer_name and os.path.isdir(os.path.join(folder, config.tokenizer_name))
            else (config.tokenizer_name or folder)
        )
        return cls(AutoTokenizer.from_pretrained(source), config)

    # -- media ----------------------------------------------------------------------------------

    def pixel_values(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 ``(F, H, W, 3)`` -> float ``(F, 3, S, S)`` normalised with mean = std = 0.5."""
        x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float().div_(255.0)
        size = self.config.image_size
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False).clamp_(0, 1)
        return x.sub_(0.5).div_(0.5)

    def audio_windows(self, samples: int) -> int:
        """How many Whisper windows ``samples`` of 16 kHz audio take (at least one; at most the model's)."""
        return max(1, min(self.config.max_audio_windows, math.ceil(samples / self.window_samples)))

    @property
    def window_samples(self) -> int:
        """16 kHz samples in one Whisper window."""
        return int(self.config.audio_seconds * 16_000)

    def audio_features(self, audio: np.ndarray) -> torch.Tensor:
        """16 kHz mono float PCM -> log-mel ``(W, 80, 3000)``: one 30 s window after another (the
        last padded), as many as the audio fills, at most ``max_audio_windows``."""
        per_window = self.window_samples
        audio = audio.astype(np.float32)
        windows = [audio[i * per_window : (i + 1) * per_window] for i in range(self.audio_windows(len(audio)))]
        out = self.feature_extractor(windows, sampling_rate=16_000, return_tensors="pt")
        return out.input_features  # (W, 80, 3000)

    # -- text -----------------------------------------------------------------------------------

    def _clean(self, text: str) -> str:
        # Placeholders are the processor's to place: typed ones would break the count check.
        for token in (self.config.audio_token, self.config.video_token):
            text = text.replace(token + "\n", "").replace(token, "")
        return text.strip()

    def check_text_fits(self, messages: list, max_new_tokens: int = 0, media_tokens: int = 0, media: int = 0) -> None:
        """Refuses, in time linear in the text and before any tokenizing, a conversation that
        cannot fit the context: more messages than the context has positions, or more text than
        the free positions could hold at the longest token's length."""
        limit = self.config.context_length
        if len(messages) > limit:
            raise TooManyMessages(f"the conversation has {len(messages)} messages; at most {limit} can fit the context")
        chars = sum(len(t) for m in messages for t in _texts(m))
        at_least = math.ceil(chars / self.max_token_chars)
        if at_least + media_tokens + max_new_tokens > limit:
            prompt = at_least + media_tokens
            raise ContextLengthError(prompt + max_new_tokens, limit, prompt, max_new_tokens, True, media)

    def segments(
        self, messages: list[dict], blocks: Sequence[Block], add_generation_prompt: bool = True
    ) -> list[tuple[str, bool]]:
        """The prompt as (text, learned) pieces: answers and their EOS are learned, the rest not.
        Each block's placeholders open the user message it belongs to, in order."""
        system = self.config.system_prompt
        turns = []
        for i, m in enumerate(messages):
            role = m.get("role")
            content = "".join(_texts(m))
            try:
                content.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError(f"message {i}'s text is not valid Unicode (it holds a lone surrogate)") from None
            content = self._clean(content)  # in every role: a typed placeholder would break the count check
            if role == "system":
                system = content or system
            elif role in ("user", "assistant"):
                turns.append((i, role, content))
            else:
                raise ValueError(f"unknown message role {role!r}; use system, user or assistant")
        if not turns or turns[0][1] != "user":
            raise ValueError("the conversation must start with a user message")
        for (_, a, _), (_, b, _) in zip(turns, turns[1:]):
            if a == b:
                raise ValueError("user and assistant messages must alternate")
        if add_generation_prompt and turns[-1][1] != "user":
            raise ValueError("the last message must come from the user")

        media: dict[int, str] = {}
        users = {i for i, role, _ in turns if role == "user"}
        last = turns[0][0]
        for block in blocks:
            at = turns[0][0] if block.message is None else block.message
            if at not in users:
                raise ValueError(f"message {at} is not a user message: media go in user messages")
            if at < last:
                raise ValueError("the media must come in the order of the messages they belong to")
            last = at
            text = (self.config.audio_token + "\n") * int(block.audio_windows)
            media[at] = media.get(at, "") + text + (self.config.video_token + "\n" if block.video else "")
        pieces: list[tuple[str, bool]] = []
        prefix = system + " "
        for i, role, text in turns:
            if role == "user":
                pieces.append((prefix + "USER: " + media.get(i, "") + text + " ASSISTANT:", False))
            else:
                pieces.append((" " + text + EOS, True))
            prefix = ""
        return pieces

    def tokenize(self, pieces: list[tuple[str, bool]]) -> tuple[list[int], list[int]]:
        ids: list[int] = []
        labels: list[int] = []
        expand = {self.audio_token_id: self.config.audio_tokens, self.video_token_id: self.config.video_tokens}
        for text, learned in pieces:
            for tid in self.tokenizer(text, add_special_tokens=False).input_ids:
                n = expand.get(tid, 1)
                ids.extend([tid] * n)
                labels.extend([tid] * n if learned else [IGNORE_INDEX] * n)
        return ids, labels

    def encode_chat(
        self,
        messages: list[dict],
        blocks: Sequence[Block],
        add_generation_prompt: bool = True,
        max_new_tokens: int = 0,
    ) -> tuple[list[int], list[int], dict[str, int]]:
        """Token ids, labels and token counts of a chat with the media ``blocks``; raises
        ``ContextLengthError`` when the prompt plus ``max_new_tokens`` cannot fit the context."""
        media = sum(b.tokens(self.config) for b in blocks)
        self.check_text_fits(messages, max_new_tokens, media, len(blocks))
        ids, labels = self.tokenize(self.segments(messages, blocks, add_generation_prompt))
        limit = self.config.context_length
        if len(ids) + max_new_tokens > limit:
            raise ContextLengthError(len(ids) + max_new_tokens, limit, len(ids), max_new_tokens, media=len(blocks))
        n_audio = ids.count(self.audio_token_id)
        n_video = ids.count(self.video_token_id)
        return ids, labels, {"audio": n_audio, "video": n_video, "text": len(ids) - n_audio - n_video}


def _texts(message: dict) -> list[str]:
    """The text of a message: its content, or its text parts (OpenAI content parts)."""
    content = message.get("content")
    if isinstance(content, str):
        return [content]
    if isinstance(content, list):
        texts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        if all(isinstance(t, str) for t in texts):
            return texts
    raise ValueError(f"message content must be text, got {type(content).__name__}")
