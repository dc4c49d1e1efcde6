"""Service settings, read from ``AVCHAT_*`` environment variables (pydantic-settings).

Lists (``AVCHAT_API_KEYS``, ``AVCHAT_ALLOWED_VIDEO_HOSTS``) are JSON arrays or comma-separated.
"""

from __future__ import annotations

import os
import secrets
import tempfile
from functools import cached_property, lru_cache
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from model.media import MediaLimits

LOOPBACK = {"127.0.0.1", "localhost", "::1", "localhost.localdomain"}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AVCHAT_", extra="ignore")

    model: str = Field("demo", description="checkpoint folder or preset (demo, tiny, phi2)")
    served_model_name: str | None = Field(None, description="the id /v1/models reports; default: from `model`")
    engine: Literal["auto", "transformers", "vllm"] = Field(
        "auto", description="auto: vLLM on a GPU when it is installed, else transformers"
    )
    device: str = "cpu"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    quantization: Literal["none", "int8", "fp8", "awq", "gptq", "bnb-8bit", "bnb-4bit"] = Field(
        "none",
        description="int8: weight-only int8 encoders and LLM on a CPU (transformers engine); fp8/awq/gptq: "
        "vLLM's, for the LLM on a GPU; bnb-8bit/bnb-4bit: bitsandbytes, transformers engine on a GPU",
    )

    # -- admission ---------------------------------------------------------------------------
    max_concurrency: int = Field(4, description="generations running at once")
    max_queue: int = Field(32, description="requests waiting beyond max_concurrency; more get 503")
    max_uploads: int = Field(64, description="uploads (bodies with a file, or over 1 MiB) held at once")
    upload_min_bytes: int = Field(64 * 1024, description="a body must bring at least this many bytes ...")
    upload_rate_window_s: float = Field(10.0, description="... in every window of this many seconds, else 408")
    upload_timeout_s: float = Field(600.0, description="a whole body must arrive within this, else 408")
    upload_fair_bytes_s: float = Field(
        1024 * 1024, description="with every upload place taken, the slowest upload under this rate gives its place up"
    )
    max_body_memory_bytes: int = Field(
        1024**3, description="bytes of request bodies (JSON, form fields) held in memory, all requests together"
    )
    header_timeout_s: float = Field(10.0, description="connections that have not sent their headers by then close")
    request_timeout_s: float = Field(300.0, description="from a complete body to the last token; then 504")
    drain_timeout_s: float = Field(6.0, description="on stop, requests in flight get this long (Docker waits 10 s)")
    default_max_tokens: int = 256

    # -- request bodies ----------------------------------------------------------------------
    max_upload_bytes: int = 512 * 1024 * 1024
    max_form_fields: int = Field(32, description="parts of a multipart body")
    max_field_bytes: int = Field(256 * 1024, description="bytes of one form field (the file aside)")

    # -- media (the per-file budgets are model.media.MediaLimits, read from the same AVCHAT_* variables) --
    heavy_decode_pixels: int = Field(
        2**31, description="a frame decode over this many pixels runs in its own lane, at low CPU priority"
    )
    # ffmpeg decodes are multi-threaded: about one per two cores keeps them from starving the encoders.
    max_parallel_decodes: int = Field(default_factory=lambda: max(1, min(4, (os.cpu_count() or 2) // 2)))
    feature_cache_bytes: int = 1024 * 1024 * 1024
    feature_store: str | None = Field(
        None, description="redis://host:port/db: features shared by every replica (L2 behind this process's LRU)"
    )
    feature_ttl_s: float = Field(86400.0, description="how long a video's features stay in the shared store")
    feature_store_timeout_s: float = Field(0.25, description="longest a request waits on the shared store")
    encoder_batch_window_ms: float = 15.0
    encoder_max_batch: int = Field(8, description="videos encoded together by SigLIP")
    temp_dir: str = Field(default_factory=lambda: tempfile.gettempdir())

    # -- batches -----------------------------------------------------------------------------
    data_dir: str = Field(
        default_factory=lambda: os.path.join(
            os.environ.get("AVCHAT_HOME") or os.path.expanduser("~/.cache/avchat"), "data"
        ),
        description="where the Batch API keeps its files and its SQLite state",
    )
    batch_concurrency: int = Field(1, ge=1, description="generation places a batch takes at once (behind interactive)")
    batch_max_file_bytes: int = Field(200 * 1024 * 1024, description="largest input file")
    batch_max_lines: int = Field(50_000, description="most lines in one batch")
    batch_max_active: int = Field(4, description="batches in flight per API key")

    # -- access ------------------------------------------------------------------------------
    host: str = Field("127.0.0.1", description="the address the service is bound to (python -m service --host)")
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Host header names answered; default: the bound address, plus the localhost names on "
        "loopback; any name when bound to all addresses; * for any",
    )
    api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)
    allowed_video_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="origins (https://host[:port]; a bare host means https) video_url may use"
    )
    allowed_local_media_path: str | None = Field(None, description="file:// video URLs may name files under it")
    secret: str = Field(default_factory=lambda: secrets.token_hex(32), description="keys the video_id HMAC")
    docs: Literal["auto", "on", "off"] = Field("auto", description="/docs, /redoc, /openapi.json; auto: off with keys")
    metrics_require_key: bool = False
    metrics_port: int = Field(0, description="serve /metrics on this port instead of the API's (0: the API's)")

    vllm_gpu_memory: float = Field(0.6, description="vLLM's share of GPU memory; the encoders use the rest")
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs vLLM splits the LLM over (the encoders stay on one)")

    @field_validator("api_keys", "allowed_video_hosts", "allowed_hosts", mode="before")
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

    @cached_property
    def media_limits(self) -> MediaLimits:
        return MediaLimits.from_env()

    @property
    def host_names(self) -> set[str] | None:
        """The Host header names answered (None: any)."""
        if self.allowed_hosts:
            return None if "*" in self.allowed_hosts else {h.lower().strip("[]") for h in self.allowed_hosts}
        host = self.host.lower().strip("[]")
        if host in ("", "0.0.0.0", "::"):
            return None
        if host in LOOPBACK or host.startswith("127."):
            return LOOPBACK | {host}
        return {host}

    @property
    def docs_open(self) -> bool:
        return self.docs == "on" or (self.docs == "auto" and not self.api_keys)

    @property
    def max_json_bytes(self) -> int:
        """A JSON body carries the video as base64 (4/3 of its size) plus small text."""
        return self.max_upload_bytes * 4 // 3 + 1024 * 1024


@lru_cache
def get_settings() -> Settings:
    return Settings()
