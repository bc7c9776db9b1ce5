"""``mreg serve``: both services in one process on the embedded default (SQLite + local disk)."""

from __future__ import annotations

from pathlib import Path

from mreg.blob_service import server as blob_server
from mreg.blob_service.config import BlobConfig
from mreg.metadata_service import server as metadata_server
from mreg.metadata_service.config import MetadataConfig
from mreg.server_runtime import runtime


def serve(data_dir: str, host: str, metadata_port: int, blob_port: int, database_url: str | None = None) -> None:
    """Runs until SIGINT or SIGTERM."""
    runtime.configure_logging()
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
    runtime.wait_for_stop_signal()
    metadata.stop(grace=runtime.STOP_GRACE_SECONDS)
    blobs.stop(grace=runtime.STOP_GRACE_SECONDS)
