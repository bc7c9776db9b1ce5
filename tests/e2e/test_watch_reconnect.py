"""`mreg watch` outlives a restart of the metadata service: it reconnects after the last event it saw."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from mreg.client import Registry
from tests.helpers import make_checkpoint
from tests.processes import ServiceProcess

MREG = Path(sys.executable).parent / "mreg"


def test_watch_reconnects_with_its_cursor_when_the_server_restarts(servers, unique, tmp_path: Path) -> None:
    service = ServiceProcess(
        "mreg.metadata_service", ["--database-url", servers.database_url, "--blob-addr", servers.blob.address]
    ).start()
    artifact = f"acme/vision/reconnect-{unique}"
    env = dict(os.environ, MREG_METADATA_ADDR=service.address, MREG_BLOB_ADDR=servers.blob.address)
    try:
        with Registry.connect(service.address, servers.blob.address) as registry:
            registry.push(make_checkpoint(tmp_path / "before", 1000, seed=1), artifact)
        watcher = subprocess.Popen(
            [str(MREG), "watch", "--since", "0", "--prefix", artifact, "--limit", "3", "--json"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert watcher.stdout is not None
        first = json.loads(watcher.stdout.readline())  # collection.created: the stream is live
        assert first["resource"] == artifact
        service.kill()
        service.start()
        with Registry.connect(service.address, servers.blob.address) as registry:
            registry.push(make_checkpoint(tmp_path / "after", 1000, seed=2), artifact)
        watcher.wait(timeout=120)
        # Read through the same buffered stream as the first line (communicate() would skip its buffer).
        out, err = watcher.stdout.read(), watcher.stderr.read() if watcher.stderr else ""
    finally:
        service.stop()
    events = [first, *(json.loads(line) for line in out.splitlines())]
    assert watcher.returncode == 0, err
    assert [e["kind"] for e in events].count("version.committed") == 2, (out, err)
    sequences = [e["sequence"] for e in events]
    assert sequences == sorted(set(sequences)), "an event was missed or printed twice"
