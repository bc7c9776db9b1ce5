"""A metadata database whose disk is full answers RESOURCE_EXHAUSTED and keeps serving reads."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from mreg.blob_service import server as blob_server
from mreg.blob_service.config import BlobConfig
from mreg.client import MregError, Registry
from mreg.metadata_service import server as metadata_server
from mreg.metadata_service.config import MetadataConfig
from tests.helpers import push_one
from tests.wire import Wire


@pytest.fixture
def small_disk(small_tmpfs) -> Path:
    return small_tmpfs("small-disk", "2m")


def test_a_full_sqlite_disk_is_resource_exhausted_and_reads_keep_working(
    small_disk: Path, tmp_path: Path, unique
) -> None:
    blobs = blob_server.start(BlobConfig(listen="127.0.0.1:0", store=str(tmp_path / "blobs")))
    metadata = metadata_server.start(
        MetadataConfig(
            listen="127.0.0.1:0",
            database_url=f"sqlite:///{small_disk / 'metadata.db'}",
            blob_addr=blobs.address,
            gc_interval_seconds=0,
        )
    )
    try:
        with (
            Registry.connect(metadata.address, blobs.address, entity="acme", project="vision") as registry,
            Wire(metadata.address, blobs.address) as wire,
        ):
            first = push_one(wire, f"kept-{unique}", "kept")
            ballast = small_disk / "ballast"
            with open(ballast, "wb", buffering=0) as f, contextlib.suppress(OSError):
                while True:
                    f.write(b"\0" * (16 << 10))

            with pytest.raises(MregError) as full:
                for i in range(50):  # the WAL may absorb a few small commits before the disk refuses
                    push_one(wire, f"more-{unique}", f"content {i} " + "x" * 20_000)
            assert (full.value.code, full.value.reason) == ("RESOURCE_EXHAUSTED", "STORAGE_FULL"), full.value
            assert "full" in full.value.message

            assert registry.resolve(first.version.name).version.name == first.version.name
            ballast.unlink()
            push_one(wire, f"after-{unique}", "room again")
    finally:
        metadata.stop(grace=None)
        blobs.stop(grace=None)
