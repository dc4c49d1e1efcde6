"""Turns media and a chat into model inputs.

* frames (uint8 RGB) -> SigLIP pixel values: 384 x 384, ``(x / 255 - 0.5) / 0.5``;
* 16 kHz audio -> Whisper log-mel, 80 x 3000 (one 30 s window, padded or cut);
* a chat -> token ids in Bunny's template, each placeholder expanded to its exact token count,
  and labels that mask everything but the answers (and their ``<|endoftext|>``) to -100.

Template (Bunny ``conv_bunny``)::

    {system} USER: <audio>\\n<video>\\n{question} ASSISTANT: {answer}<|endoftext|>USER: {q2} ASSISTANT:
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F
from transformers import WhisperFeatureExtractor

from .config import AVChatConfig

IGNORE_INDEX = -100
EOS = "<|endoftext|>"


class ContextLengthError(ValueError):
    """The prompt (media tokens included) plus the tokens to generate exceed the LLM's context."""

    def __init__(self, needed: int, limit: int, prompt_tokens: int, max_new_tokens: int):
        self.needed, self.limit, self.over = needed, limit, needed - limit
        super().__init__(
            f"the prompt needs {prompt_tokens} tokens (media included) and max_tokens asks for {max_new_tokens} more: "
            f"{needed} in all, {self.over} over the model's context of {limit} tokens; "
            "shorten the conversation or lower max_tokens"
        )


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

    def audio_features(self, audio: np.ndarray) -> torch.Tensor:
        """16 kHz mono float PCM -> log-mel ``(80, 3000)``."""
        out = self.feature_extractor(audio.astype(np.float32), sampling_rate=16_000, return_tensors="pt")
        return out.input_features[0]

    # -- text -----------------------------------------------------------------------------------

    def _clean(self, text: str) -> str:
        # Placeholders are the processor's to place: typed ones would break the count check.
        for token in (self.config.audio_token, self.config.video_token):
            text = text.replace(token + "\n", "").replace(token, "")
        return text.strip()

    def segments(
        self, messages: list[dict], has_audio: bool, has_video: bool, add_generation_prompt: bool = True
    ) -> list[tuple[str, bool]]:
        """The prompt as (text, learned) pieces: answers and their EOS are learned, the rest not."""
        system = self.config.system_prompt
        turns = []
        for m in messages:
            role, content = m.get("role"), m.get("content")
            if isinstance(content, list):  # OpenAI content parts: keep the text ones
                content = "".join(p.get("text", "") for p in content if p.get("type") == "text")
            if not isinstance(content, str):
                raise ValueError(f"message content must be text, got {type(content).__name__}")
            content = self._clean(content)  # in every role: a typed placeholder would break the count check
            if role == "system":
                system = content or system
            elif role in ("user", "assistant"):
                turns.append((role, content))
            else:
                raise ValueError(f"unknown message role {role!r}; use system, user or assistant")
        if not turns or turns[0][0] != "user":
            raise ValueError("the conversation must start with a user message")
        for (a, _), (b, _) in zip(turns, turns[1:]):
            if a == b:
                raise ValueError("user and assistant messages must alternate")
        if add_generation_prompt and turns[-1][0] != "user":
            raise ValueError("the last message must come from the user")

        media = ""
        if has_audio:
            media += self.config.audio_token + "\n"
        if has_video:
            media += self.config.video_token + "\n"
        pieces: list[tuple[str, bool]] = []
        prefix = system + " "
        for i, (role, text) in enumerate(turns):
            if role == "user":
                pieces.append((prefix + "USER: " + (media if i == 0 else "") + text + " ASSISTANT:", False))
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
        has_audio: bool,
        has_video: bool,
        add_generation_prompt: bool = True,
        max_new_tokens: int = 0,
    ) -> tuple[list[int], list[int], dict[str, int]]:
        """Token ids, labels and token counts of a chat; raises ``ContextLengthError`` when the
        prompt plus ``max_new_tokens`` cannot fit the context."""
        ids, labels = self.tokenize(self.segments(messages, has_audio, has_video, add_generation_prompt))
        limit = self.config.context_length
        if len(ids) + max_new_tokens > limit:
            raise ContextLengthError(len(ids) + max_new_tokens, limit, len(ids), max_new_tokens)
        n_audio = ids.count(self.audio_token_id)
        n_video = ids.count(self.video_token_id)
        return ids, labels, {"audio": n_audio, "video": n_video, "text": len(ids) - n_audio - n_video}

    def decode(self, ids) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)
