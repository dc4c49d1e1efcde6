"""The service's paths, in one place (routes, middleware, metrics and the OpenAPI schema use these)."""

from __future__ import annotations

PAGE = "/"
HEALTH = "/health"
READY = "/ready"
METRICS = "/metrics"
MODELS = "/v1/models"
VIDEO_CHAT = "/v1/video/chat"
CHAT_COMPLETIONS = "/v1/chat/completions"
DOCS = ("/docs", "/redoc", "/openapi.json")

FILES = "/v1/files"
BATCHES = "/v1/batches"

CHAT = (VIDEO_CHAT, CHAT_COMPLETIONS)
ROUTES = frozenset({PAGE, HEALTH, READY, METRICS, MODELS, *CHAT, FILES, BATCHES})
API_PREFIX = "/v1/"
