"""Service settings, read from ``AVCHAT_*`` environment variables (pydantic-settings).

Lists (``AVCHAT_API_KEYS``, ``AVCHAT_ALLOWED_VIDEO_HOSTS``) are JSON arrays or comma-separated.
"""

from __future__ import annotations

import os
import tempfile
from functools import lru_cache
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AVCHAT_", extra="ignore")

    model: str = Field("demo", description="checkpoint folder or preset (demo, tiny, phi2)")
    served_model_name: str | None = Field(None, description="the id /v1/models reports; default: from `model`")
    engine: Literal["auto", "transformers", "vllm"] = "auto"
    device: str = "cpu"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"

    max_upload_bytes: int = 512 * 1024 * 1024
    max_video_seconds: float = 3600.0
    max_concurrency: int = Field(4, description="generations running at once")
    max_queue: int = Field(32, description="requests waiting beyond max_concurrency; more get 503")
    # ffmpeg decodes are multi-threaded: about one per two cores keeps them from starving the encoders.
    max_parallel_decodes: int = Field(default_factory=lambda: max(1, min(4, (os.cpu_count() or 2) // 2)))
    request_timeout_s: float = 300.0
    ffmpeg_timeout_s: float = 120.0
    default_max_tokens: int = 256

    api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)
    allowed_video_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)

    vllm_gpu_memory: float = Field(0.6, description="vLLM's share of GPU memory; the encoders use the rest")
    feature_cache_bytes: int = 1024 * 1024 * 1024
    encoder_batch_window_ms: float = 15.0
    encoder_max_batch: int = Field(8, description="videos encoded together by SigLIP")
    temp_dir: str = Field(default_factory=lambda: tempfile.gettempdir())

    @field_validator("api_keys", "allowed_video_hosts", mode="before")
    @classmethod
    def _split(cls, value):
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                import json

                return json.loads(text)
            return [v.strip() for v in text.split(",") if v.strip()]
        return value

    @property
    def model_id(self) -> str:
        if self.served_model_name:
            return self.served_model_name
        return os.path.basename(os.path.normpath(self.model)) or self.model


@lru_cache
def get_settings() -> Settings:
    return Settings()
