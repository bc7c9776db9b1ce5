"""``mreg serve``: both services in one process on the embedded default (SQLite + local disk)."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path

from mreg.blob_service import server as blob_server
from mreg.blob_service.config import BlobConfig
from mreg.metadata_service import server as metadata_server
from mreg.metadata_service.config import MetadataConfig


def serve(data_dir: str, host: str, metadata_port: int, blob_port: int, database_url: str | None = None) -> None:
    """Runs until SIGINT or SIGTERM."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    root = Path(data_dir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    blobs = blob_server.start(BlobConfig(listen=f"{host}:{blob_port}", store=str(root / "blobs")))
    metadata = metadata_server.start(
        MetadataConfig(
            listen=f"{host}:{metadata_port}",
            database_url=database_url or f"sqlite:///{root / 'metadata.db'}",
            blob_addr=f"{host}:{blobs.port}",
        )
    )
    print(f"mreg metadata service listening on {host}:{metadata.port}", flush=True)
    print(f"mreg blob service listening on {host}:{blobs.port}", flush=True)
    print(f"data in {root}; stop with Ctrl-C", flush=True)
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    signal.signal(signal.SIGINT, lambda *_: stopped.set())
    stopped.wait()
    metadata.stop(grace=5)
    blobs.stop(grace=5)
