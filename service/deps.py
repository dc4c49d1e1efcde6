"""Dependencies the routes share: the loaded state, and readiness."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from .errors import NotReady
from .settings import Settings


class State:
    """What the lifespan loads. ``ready`` only once the model is loaded and ffmpeg answered;
    ``fatal`` once the service cannot serve again (its engine died) and is stopping."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.ready = False
        self.model = self.worker = self.engine = self.chat = self.admission = self.batches = None
        self.error: str | None = None  # why starting failed, as a sentence
        self.fatal: str | None = None  # why the service stopped serving
        self.stopping = False
        self.loop = None  # the event loop the lifespan runs on
        self.tasks: list = []  # background tasks the lifespan cancels

    def begin_stop(self) -> None:
        """A stop began (SIGTERM, Ctrl-C): unready at once, and after the drain what still runs ends
        with an error. Called from the signal handler, hence through the loop."""
        if self.loop is None or self.stopping:
            return
        self.stopping = True
        if self.batches is not None:
            self.loop.call_soon_threadsafe(self.batches.pause)
        chat = self.chat
        if chat is not None:
            self.loop.call_soon_threadsafe(self.loop.call_later, self.settings.drain_timeout_s, chat.stop)

    def unready(self) -> str | None:
        """Why the service cannot answer now (None when it can)."""
        if self.fatal is not None:
            return f"{self.fatal}; the service is stopping"
        if self.stopping:
            return "the service is stopping"
        if self.ready:
            return None
        return "the model is still loading" if self.error is None else self.error


def get_state(request: Request) -> State:
    return request.app.state.avchat


def require_ready(state: Annotated[State, Depends(get_state)]) -> State:
    reason = state.unready()
    if reason is not None:
        raise NotReady(reason, headers={"Retry-After": "5"})
    return state


Loaded = Annotated[State, Depends(get_state)]
Ready = Annotated[State, Depends(require_ready)]
