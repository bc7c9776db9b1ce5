"""Runs the blob service: ``python -m blob_service --listen HOST:PORT --store DIR|s3://...``."""

from __future__ import annotations

from blob_service import config, server
from service_common.runtime import run_main


def main(argv: list[str] | None = None) -> None:
    run_main(
        argv,
        prog="python -m blob_service",
        description=__doc__,
        add_arguments=config.add_arguments,
        start=lambda args: server.start(config.from_args(args)),
        what="blob service",
    )


if __name__ == "__main__":
    main()
