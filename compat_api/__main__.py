"""Command line.

`python -m compat_api [--host H] [--port P] [--model-path DIR] ...` serves the API (every
setting is a flag; `--help` lists them). `python -m compat_api download-model ...` puts a model
on the model volume (see compat_api/provision.py).
"""

from __future__ import annotations

import math
import sys
from types import FrameType

import uvicorn
from fastapi import FastAPI
from pydantic import ValidationError

from compat_api.api.app import create_app, preflight
from compat_api.api.connections import guarded_protocol
from compat_api.api.observability import configure_logging
from compat_api.core.errors import CoreError
from compat_api.settings import Settings, settings_problems


def serve(argv: list[str]) -> None:
    try:
        settings = Settings(_cli_parse_args=argv)
    except ValidationError as exc:
        sys.exit(f"compat-api: invalid settings (environment or flags):\n{settings_problems(exc)}")
    configure_logging(settings.log_level, settings.log_format == "json")
    try:
        preflight(settings)
    except CoreError as exc:
        sys.exit(f"compat-api: cannot start: {exc.message}")
    server = build_server(settings)
    # Bind before the lifespan starts loading models: a port already in use ends the process at
    # once instead of after a load of minutes.
    try:
        listener = server.config.bind_socket()  # logs the OS error and exits 3 when it cannot bind
    except SystemExit:
        print(f"compat-api: cannot listen on {settings.host}:{settings.port}", file=sys.stderr)
        raise
    server.run(sockets=[listener])
    app = server.config.app
    if isinstance(app, FastAPI) and getattr(app.state, "startup_error", None):
        sys.exit(1)  # the clear line is already in the log


# How long before the end of the shutdown grace requests still running are answered 503.
DRAIN_MARGIN_S = 0.5


def build_server(settings: Settings) -> uvicorn.Server:
    """uvicorn serving the app, listening while the models load (503 until ready). On SIGTERM it
    stops accepting connections and lets admitted requests finish within the grace; those still
    running just before it ends get a JSON 503."""
    app = create_app(settings, background_load=True)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        http=guarded_protocol(settings.header_timeout, settings.max_connections, settings.send_timeout),
        log_level=settings.log_level,
        log_config=None,  # our handlers: text or JSON lines with the request id
        access_log=False,  # one access line per request comes from our middleware
        timeout_graceful_shutdown=math.ceil(settings.shutdown_grace),
        timeout_keep_alive=settings.keep_alive_timeout,
    )
    server = uvicorn.Server(config)
    stop = server.handle_exit

    def handle_exit(sig: int, frame: FrameType | None) -> None:
        # Health turns 503 at once; uvicorn stops accepting and lets admitted requests finish
        # within the grace period, just before whose end the rest are answered 503.
        app.state.status = "stopping"
        loop, draining = getattr(app.state, "loop", None), getattr(app.state, "draining", None)
        if loop is not None and draining is not None:
            delay = max(0.0, settings.shutdown_grace - DRAIN_MARGIN_S)
            loop.call_soon_threadsafe(loop.call_later, delay, draining.set)
        stop(sig, frame)

    server.handle_exit = handle_exit  # type: ignore[method-assign]

    def on_startup_failure() -> None:  # a model that cannot load: stop serving (exit status 1)
        server.should_exit = True

    app.state.on_startup_failure = on_startup_failure
    return server


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["download-model"]:
        from compat_api.provision import main as provision

        sys.exit(provision(args[1:]))
    serve(args)


if __name__ == "__main__":
    main()
