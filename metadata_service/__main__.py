"""Runs the metadata service: ``python -m mreg.metadata_service --listen HOST:PORT --database-url URL``."""

from __future__ import annotations

from mreg.metadata_service import config, server
from mreg.server_runtime.runtime import run_main


def main(argv: list[str] | None = None) -> None:
    run_main(
        argv,
        prog="python -m mreg.metadata_service",
        description=__doc__,
        add_arguments=config.add_arguments,
        start=lambda args: server.start(config.from_args(args)),
        what="metadata service",
    )


if __name__ == "__main__":
    main()
