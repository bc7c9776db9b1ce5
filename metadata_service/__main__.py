"""Runs the metadata service: ``python -m mreg.metadata_service --listen HOST:PORT --database-url URL``."""

from __future__ import annotations

import argparse
import logging
import signal
import threading

from mreg.metadata_service import config, server


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mreg.metadata_service", description=__doc__)
    config.add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    running = server.start(config.from_args(args))
    print(f"metadata service listening on {running.address}", flush=True)
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    signal.signal(signal.SIGINT, lambda *_: stopped.set())
    stopped.wait()
    running.stop(grace=5)


if __name__ == "__main__":
    main()
