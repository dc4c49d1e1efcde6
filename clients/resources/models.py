"""``client.models``: what the service serves."""

from __future__ import annotations

from .._types import ModelList


class Models:
    def __init__(self, client):
        self._client = client

    def list(self) -> ModelList:
        return ModelList.model_validate(self._client.request("GET", "/v1/models").json())


class AsyncModels:
    def __init__(self, client):
        self._client = client

    async def list(self) -> ModelList:
        return ModelList.model_validate((await self._client.request("GET", "/v1/models")).json())
