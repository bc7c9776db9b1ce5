"""Runs the blob service: ``python -m mreg.blob_service --listen HOST:PORT --store DIR|s3://...``."""

from __future__ import annotations

import argparse
import logging
import signal
import threading

from mreg.blob_service import config, server


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mreg.blob_service", description=__doc__)
    config.add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    running = server.start(config.from_args(args))
    print(f"blob service listening on {running.address}", flush=True)
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    signal.signal(signal.SIGINT, lambda *_: stopped.set())
    stopped.wait()
    running.stop(grace=5)


if __name__ == "__main__":
    main()
