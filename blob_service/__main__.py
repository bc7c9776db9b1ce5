"""Runs the blob service: ``python -m mreg.blob_service --listen HOST:PORT --store DIR|s3://...``."""

from __future__ import annotations

from mreg.blob_service import config, server
from mreg.server_runtime.runtime import run_main


def main(argv: list[str] | None = None) -> None:
    run_main(
        argv,
        prog="python -m mreg.blob_service",
        description=__doc__,
        add_arguments=config.add_arguments,
        start=lambda args: server.start(config.from_args(args)),
        what="blob service",
    )


if __name__ == "__main__":
    main()
