"""The HTTP server: uvicorn with a header timeout.

uvicorn closes idle keep-alive connections, but not a connection that opens and then sends its
request line and headers a byte at a time. :class:`GuardedH11Protocol` closes any connection
whose request headers are not complete ``header_timeout`` seconds after it started waiting
for them. ``python -m service`` runs uvicorn with it (see ``__main__.py``).
"""

from __future__ import annotations

import asyncio

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol


class GuardedH11Protocol(H11Protocol):
    header_timeout: float = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_timer: asyncio.TimerHandle | None = None
        self._guard()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._guard()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._guard()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        super().connection_lost(exc)

    def _waiting_for_headers(self) -> bool:
        return self.conn.their_state is h11.IDLE

    def _guard(self) -> None:
        if self._waiting_for_headers():
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(self.header_timeout, self._expire)
        else:
            self._cancel_timer()

    def _cancel_timer(self) -> None:
        if getattr(self, "_header_timer", None) is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _expire(self) -> None:
        self._header_timer = None
        if self._waiting_for_headers() and not self.transport.is_closing():
            self.transport.close()


def protocol_with_timeout(seconds: float) -> type[GuardedH11Protocol]:
    return type("GuardedH11Protocol", (GuardedH11Protocol,), {"header_timeout": seconds})
