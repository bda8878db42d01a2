"""Command line: `python -m compat_api [--host H] [--port P] [--model-path DIR] ...` serves the API."""

from __future__ import annotations

import logging
import sys

import uvicorn

from compat_api.api.app import create_app
from compat_api.settings import Settings


def main(argv: list[str] | None = None) -> None:
    settings = Settings(_cli_parse_args=sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=30,
    )


if __name__ == "__main__":
    main()
