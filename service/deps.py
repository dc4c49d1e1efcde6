"""Dependencies the routes share: the loaded state, and readiness."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from .errors import NotReady
from .settings import Settings


class State:
    """What the lifespan loads; ``ready`` only once the model is loaded."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.ready = False
        self.model = self.worker = self.engine = self.chat = None
        self.error: str | None = None


def get_state(request: Request) -> State:
    return request.app.state.avchat


def require_ready(state: Annotated[State, Depends(get_state)]) -> State:
    if not state.ready:
        raise NotReady(
            "the model is still loading" if state.error is None else f"the model failed to load: {state.error}",
            headers={"Retry-After": "5"},
        )
    return state


Loaded = Annotated[State, Depends(get_state)]
Ready = Annotated[State, Depends(require_ready)]
