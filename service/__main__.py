"""Run the service: ``python -m service [--host 0.0.0.0] [--port 8000]``.

This is uvicorn serving ``service.app:create_app`` with the protections a public server needs:
a header timeout (AVCHAT_HEADER_TIMEOUT_S), a bounded stop (on SIGTERM or Ctrl-C it turns
unready, lets requests in flight run for AVCHAT_DRAIN_TIMEOUT_S, then ends what still runs with
an error, in-band for streams), no process left behind even when killed (``reaper.py``), and one
access-log line per request (the service's own JSON line; uvicorn's is off).

Exit status: 0 after a stop, 2 for settings that cannot run, 3 when the generation engine died (so
an orchestrator restarts it).
"""

from __future__ import annotations

import argparse
import os
import sys

import uvicorn

from .http import protocol_with_timeout
from .reaper import mark_and_exec
from .settings import get_settings

ENGINE_DIED = 3


class _Server(uvicorn.Server):
    """uvicorn's server, telling the app when a stop begins (so it can drain and turn unready)."""

    def __init__(self, config: uvicorn.Config, state):
        super().__init__(config)
        self.avchat = state

    def handle_exit(self, sig, frame) -> None:
        self.avchat.begin_stop()
        super().handle_exit(sig, frame)
        # uvicorn raises the signal again once it has stopped, so the process dies of it: after a
        # graceful stop the exit status is ours (0, or 3 when the engine died) instead.
        self._captured_signals.clear()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m service", description=__doc__.splitlines()[0])
    p.add_argument("--host", default=os.environ.get("AVCHAT_HOST", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(os.environ.get("AVCHAT_PORT", "8000")))
    p.add_argument("--log-level", default="warning", help="uvicorn's own log level (the service logs at INFO)")
    args = p.parse_args(argv)
    mark_and_exec()  # once: every process the service starts carries its pid from here on
    from pydantic import ValidationError

    from model.quantization import QuantizationUnavailable

    from .app import create_app
    from .loading import check_quantization

    try:
        settings = get_settings().model_copy(update={"host": args.host})
        check_quantization(settings)  # a combination that cannot run stops here, before anything loads
    except ValidationError as exc:
        for error in exc.errors():
            print(f"error: AVCHAT_{str(error['loc'][0]).upper()}: {error['msg']}", file=sys.stderr)
        return 2
    except QuantizationUnavailable as exc:
        print(f"error: AVCHAT_QUANTIZATION={settings.quantization}: {exc}", file=sys.stderr)
        return 2
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        http=protocol_with_timeout(settings.header_timeout_s),
        access_log=False,
        log_level=args.log_level,
        # In-band errors go out at the drain's end; uvicorn then closes what is left.
        timeout_graceful_shutdown=max(1, round(settings.drain_timeout_s + 1)),
        timeout_keep_alive=5,
    )
    _Server(config, app.state.avchat).run()
    return ENGINE_DIED if app.state.avchat.fatal else 0


if __name__ == "__main__":
    sys.exit(main())
