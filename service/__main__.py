"""Run the service: ``python -m service [--host 0.0.0.0] [--port 8000]``.

This is ``uvicorn --factory service.app:create_app`` with the protections a public server needs:
a header timeout (AVCHAT_HEADER_TIMEOUT_S), a bounded drain on stop (AVCHAT_DRAIN_TIMEOUT_S),
and one access-log line per request (the service's own JSON line; uvicorn's is off).
"""

from __future__ import annotations

import argparse
import os

import uvicorn

from .http import protocol_with_timeout
from .settings import get_settings


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m service", description=__doc__.splitlines()[0])
    p.add_argument("--host", default=os.environ.get("AVCHAT_HOST", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(os.environ.get("AVCHAT_PORT", "8000")))
    p.add_argument("--log-level", default="warning", help="uvicorn's own log level (the service logs at INFO)")
    args = p.parse_args(argv)
    settings = get_settings()
    uvicorn.run(
        "service.app:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        http=protocol_with_timeout(settings.header_timeout_s),
        access_log=False,
        log_level=args.log_level,
        timeout_graceful_shutdown=int(max(1, settings.drain_timeout_s)),
        timeout_keep_alive=5,
    )


if __name__ == "__main__":
    main()
