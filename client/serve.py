"""``mreg serve``: both services in one process on the embedded default (SQLite + local disk)."""

from __future__ import annotations

from pathlib import Path

from mreg.blob_service import server as blob_server
from mreg.blob_service.config import BlobConfig
from mreg.metadata_service import server as metadata_server
from mreg.metadata_service.config import MetadataConfig
from mreg.server_runtime import runtime


def serve(
    data_dir: str,
    host: str,
    metadata_port: int,
    blob_port: int,
    database_url: str | None = None,
    *,
    auth: bool = False,
) -> None:
    """Runs until SIGINT or SIGTERM.

    With ``auth``, both services require tokens; they share a secret in DATA_DIR/service.token,
    and the first start writes an admin token to DATA_DIR/admin.token (both mode 0600).
    """
    runtime.configure_logging()
    root = Path(data_dir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    service_token = str(root / "service.token")
    blobs = blob_server.start(
        BlobConfig(
            listen=f"{host}:{blob_port}",
            store=str(root / "blobs"),
            auth=auth,
            metadata_addr=f"{host}:{metadata_port}",
            service_token_file=service_token,
        )
    )
    metadata = metadata_server.start(
        MetadataConfig(
            listen=f"{host}:{metadata_port}",
            database_url=database_url or f"sqlite:///{root / 'metadata.db'}",
            blob_addr=f"{host}:{blobs.port}",
            auth=auth,
            admin_token_file=str(root / "admin.token"),
            service_token_file=service_token,
        )
    )
    blobs.metadata_addr = f"{host}:{metadata.port}"
    print(f"mreg metadata service listening on {host}:{metadata.port}", flush=True)
    print(f"mreg blob service listening on {host}:{blobs.port}", flush=True)
    if auth:
        print(
            f"authentication is on: the admin token is in {root / 'admin.token'} "
            "(export MREG_TOKEN=$(cat ...), or `mreg login`)",
            flush=True,
        )
    print(f"data in {root}; stop with Ctrl-C", flush=True)
    runtime.wait_for_stop_signal()
    metadata.stop(grace=runtime.STOP_GRACE_SECONDS)
    blobs.stop(grace=runtime.STOP_GRACE_SECONDS)
