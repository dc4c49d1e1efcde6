"""Prometheus metrics (served at /metrics)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "avchat_requests_total", "HTTP requests by route and status", ["route", "status"], registry=r
        )
        self.ttft = Histogram(
            "avchat_time_to_first_token_seconds",
            "Request admitted (its body received) to first generated token",
            buckets=_LATENCY,
            registry=r,
        )
        self.e2e = Histogram(
            "avchat_request_seconds", "End-to-end latency of chat requests", ["route"], buckets=_LATENCY, registry=r
        )
        self.generated_tokens = Counter("avchat_generated_tokens_total", "Tokens generated", registry=r)
        self.prompt_tokens = Counter("avchat_prompt_tokens_total", "Prompt tokens by kind", ["kind"], registry=r)
        self.decode_seconds = Histogram(
            "avchat_decode_seconds", "ffmpeg probe + frames + audio per file", buckets=_LATENCY, registry=r
        )
        self.encode_seconds = Histogram(
            "avchat_encode_seconds", "SigLIP + Whisper per encoder batch", buckets=_LATENCY, registry=r
        )
        self.encoder_batch_size = Histogram(
            "avchat_encoder_batch_size", "Videos per encoder batch", buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32), registry=r
        )
        self.queue_depth = Gauge("avchat_queue_depth", "Requests waiting for a generation slot", registry=r)
        self.active = Gauge("avchat_active_generations", "Requests holding a generation place", registry=r)
        self.engine_running = Gauge(
            "avchat_engine_generations_running",
            "Generations the engine is computing right now (0 once every request ended)",
            registry=r,
        )
        self.uploads = Gauge(
            "avchat_uploads_in_progress", "Upload places held (bodies with a file, fetches, their files)", registry=r
        )
        self.uploads_evicted = Counter(
            "avchat_uploads_evicted_total", "Slow uploads ended to give their place to a new one", registry=r
        )
        self.body_memory = Gauge("avchat_body_memory_bytes", "Bytes of request bodies held in memory", registry=r)
        self.heavy_decodes = Counter(
            "avchat_heavy_decodes_total", "Frame decodes run in the heavy lane (low priority)", registry=r
        )
        self.ready = Gauge("avchat_ready", "1 while /ready says ready", registry=r)
        self.store = Counter(
            "avchat_feature_store_total",
            "Shared feature store operations by result (hit, miss, write, error, refused, skipped)",
            ["result"],
            registry=r,
        )
        self.store_healthy = Gauge("avchat_feature_store_up", "1 while the shared feature store answers", registry=r)
        self.cache = Counter("avchat_feature_cache_total", "Feature cache lookups", ["result"], registry=r)
        self.aborted = Counter(
            "avchat_generations_aborted_total", "Generations stopped because the client left", registry=r
        )
        self.engine = Gauge(
            "avchat_engine_info", "The generation engine in use (value 1)", ["engine", "model"], registry=r
        )


METRICS = Metrics()
