"""The client takes several replicas (HOST:PORT,HOST:PORT or a DNS name) and fails over between them."""

from __future__ import annotations

import json
import signal
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from mreg.client import MregError, Registry
from mreg.client.channels import channel_target
from tests.processes import ServiceProcess


def test_a_list_of_replicas_becomes_one_static_target_and_a_single_address_stays_as_given() -> None:
    assert channel_target("localhost:50051") == ("localhost:50051", "localhost")
    assert channel_target("dns:///registry.internal:50051") == ("dns:///registry.internal:50051", "registry.internal")
    assert channel_target("127.0.0.1:1, 127.0.0.1:2") == ("ipv4:127.0.0.1:1,127.0.0.1:2", "127.0.0.1")
    target, host = channel_target("localhost:7001,localhost:7002")
    # Whatever families localhost has here, every one of its addresses is kept, for both ports.
    assert target.startswith(("ipv4:", "ipv6:")) and host == "localhost"
    assert {part.rsplit(":", 1)[1] for part in target.split(":", 1)[1].split(",")} == {"7001", "7002"}
    for bad in ("127.0.0.1:1,nohost", "127.0.0.1:1,:2", "127.0.0.1:1,host:port"):
        with pytest.raises(MregError) as error:
            channel_target(bad)
        assert error.value.code == "INVALID_ARGUMENT"


def test_a_list_mixing_ipv4_and_ipv6_replicas_keeps_them_all() -> None:
    # gRPC's static targets take one family: IPv4 replicas join the IPv6 ones as IPv4-mapped addresses,
    # where they were dropped without a word.
    assert channel_target("127.0.0.1:7001,[::1]:7002") == ("ipv6:[::ffff:127.0.0.1]:7001,[::1]:7002", "127.0.0.1")


def test_ports_outside_1_to_65535_are_refused_up_front() -> None:
    # gRPC took a single such address modulo 65536 and failed a list with UNKNOWN and a core log dump.
    for bad in ("127.0.0.1:99999", "127.0.0.1:0", "127.0.0.1:99999,127.0.0.1:7001", "[::1]:65536,[::1]:7001"):
        with pytest.raises(MregError) as error:
            channel_target(bad)
        assert error.value.code == "INVALID_ARGUMENT" and "port" in error.value.message


def test_a_grpc_target_uri_listing_replicas_is_used_as_it_is() -> None:
    # The first entry of "ipv4:a:p,b:p" was taken for the host "ipv4:a" of a comma list, and dropped.
    assert channel_target("ipv4:127.0.0.1:7001,127.0.0.1:7002") == ("ipv4:127.0.0.1:7001,127.0.0.1:7002", "127.0.0.1")
    assert channel_target("ipv6:[::1]:7001,[::1]:7002") == ("ipv6:[::1]:7001,[::1]:7002", "::1")
    assert channel_target("unix:/run/mreg.sock") == ("unix:/run/mreg.sock", "localhost")


def test_an_address_whose_port_is_missing_or_not_a_number_is_refused_up_front() -> None:
    # "HOST:" went to port 443, "HOST:abc" failed as UNAVAILABLE, and a URI's port 70000 became 4464.
    for bad in ("127.0.0.1:", "127.0.0.1:abc", "dns:///127.0.0.1:70000", "ipv4:127.0.0.1:7001,127.0.0.1:70000"):
        with pytest.raises(MregError) as error:
            channel_target(bad)
        assert error.value.code == "INVALID_ARGUMENT" and "port" in error.value.message, (bad, error.value.message)
    assert channel_target("registry.internal") == ("registry.internal", "registry.internal")  # gRPC's default port
    assert channel_target("[::1]:7001") == ("[::1]:7001", "::1")


def test_a_replica_whose_name_does_not_resolve_is_left_out_while_others_do(caplog: pytest.LogCaptureFixture) -> None:
    target, _ = channel_target("127.0.0.1:7001,nosuchhost.invalid:7002")
    assert target == "ipv4:127.0.0.1:7001"
    assert "nosuchhost.invalid" in caplog.text
    with pytest.raises(MregError) as error:
        channel_target("nosuchhost.invalid:7001,alsonot.invalid:7002")
    assert error.value.code == "UNAVAILABLE"


@pytest.fixture
def two_replicas(tmp_path: Path) -> Iterator[tuple[ServiceProcess, ServiceProcess, ServiceProcess]]:
    """Two metadata replicas on one SQLite database and one blob service, as separate processes."""
    blobs = ServiceProcess("mreg.blob_service", ["--store", str(tmp_path / "blobs")]).start()
    database = ["--database-url", f"sqlite:///{tmp_path / 'shared.db'}", "--blob-addr", blobs.address]
    first = ServiceProcess("mreg.metadata_service", database).start()
    second = ServiceProcess("mreg.metadata_service", database).start()
    try:
        yield first, second, blobs
    finally:
        for process in (first, second, blobs):
            process.stop()


def test_calls_fail_over_to_the_surviving_replica_when_one_is_killed(two_replicas, tmp_path: Path) -> None:
    first, second, blobs = two_replicas
    checkpoint = tmp_path / "ck"
    checkpoint.mkdir()
    artifact = f"failover-{uuid.uuid4().hex[:6]}"
    with Registry.connect(
        f"{first.address},{second.address}", blobs.address, entity="acme", project="vision", cache_dir=tmp_path / "c"
    ) as registry:
        pushed = []
        for i in range(6):  # round robin: both replicas serve some of these
            (checkpoint / "weights.bin").write_bytes(f"before {i}".encode())
            pushed.append(registry.push(checkpoint, artifact).version.name)

        first.kill()  # SIGKILL: no goodbye to the client

        # Every call after the crash goes to the survivor; none fails (before, the client kept
        # retrying the dead address for seconds, then raised UNAVAILABLE).
        for i in range(6):
            (checkpoint / "weights.bin").write_bytes(f"after {i}".encode())
            pushed.append(registry.push(checkpoint, artifact).version.name)
            assert registry.resolve(f"{artifact}:v{i}").version.name == pushed[i]
        assert [v.index for v in registry.list_versions(artifact)] == list(range(11, -1, -1))
        assert pushed == [f"acme/vision/{artifact}:v{i}" for i in range(12)]


def test_a_replica_that_stops_answering_is_dropped_and_its_calls_go_to_the_other(
    two_replicas, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hung replica (a frozen process, a stalled VM, a partition) keeps its connections open, so only
    keepalive pings tell it from a busy one; before, every other call waited for its deadline for as long
    as the replica stayed hung."""
    first, second, blobs = two_replicas
    monkeypatch.setenv("MREG_KEEPALIVE", "1")
    checkpoint = tmp_path / "ck"
    checkpoint.mkdir()
    (checkpoint / "weights.bin").write_bytes(b"weights")
    artifact = f"hung-{uuid.uuid4().hex[:6]}"
    with Registry.connect(
        f"{first.address},{second.address}", blobs.address, entity="acme", project="vision", timeout=15
    ) as registry:
        name = registry.push(checkpoint, artifact).version.name
        for _ in range(4):  # round robin: both replicas have a ready connection
            assert registry.resolve(f"{artifact}:latest").version.name == name
        assert second.process is not None
        second.process.send_signal(signal.SIGSTOP)
        try:
            for _ in range(10):
                assert registry.resolve(f"{artifact}:latest").version.name == name
        finally:
            second.process.send_signal(signal.SIGCONT)


def test_services_recycle_connections_so_clients_resolve_their_names_again(tmp_path: Path) -> None:
    """gRPC resolves a DNS name again only when a connection closes: a service that never closed one kept
    long-lived clients off replicas added later. Each connection now ends gracefully after its maximum age,
    and the client's calls carry on over a new one (a new peer port in the service's log)."""
    blobs = ServiceProcess("mreg.blob_service", ["--store", str(tmp_path / "blobs")]).start()
    log_file = tmp_path / "metadata.log"
    metadata = ServiceProcess(
        "mreg.metadata_service",
        [
            *("--database-url", f"sqlite:///{tmp_path / 'm.db'}", "--blob-addr", blobs.address),
            *("--max-connection-age-seconds", "1"),
        ],
        log_file=log_file,
    ).start()
    try:
        with Registry.connect(metadata.address, blobs.address, entity="acme", project="vision") as registry:

            def refused_once() -> None:  # a failed call logs the peer it came from
                with pytest.raises(MregError) as error:
                    registry.resolve("never-pushed")
                assert error.value.code == "NOT_FOUND"

            refused_once()
            for _ in range(12):  # calls across the connection's end all succeed: 3 s, three ages at least
                next(registry.list_projects("acme"), None)
                threading.Event().wait(0.25)
            refused_once()
        peers = [json.loads(line)["peer"] for line in log_file.read_text().splitlines() if '"peer"' in line]
        assert len(peers) == 2 and peers[0] != peers[1], peers
    finally:
        metadata.stop()
        blobs.stop()


def test_the_metadata_service_takes_a_list_of_blob_replicas_and_commits_through_a_survivor(tmp_path: Path) -> None:
    store = ["--store", str(tmp_path / "blobs")]  # one store shared by both replicas
    first = ServiceProcess("mreg.blob_service", store).start()
    second = ServiceProcess("mreg.blob_service", store).start()
    blobs = f"{first.address},{second.address}"
    metadata = ServiceProcess(
        "mreg.metadata_service", ["--database-url", f"sqlite:///{tmp_path / 'm.db'}", "--blob-addr", blobs]
    ).start()
    checkpoint = tmp_path / "ck"
    checkpoint.mkdir()
    try:
        with Registry.connect(metadata.address, blobs, entity="acme", project="vision", cache_dir=tmp_path / "c") as r:
            (checkpoint / "weights.bin").write_bytes(b"before")
            assert r.push(checkpoint, "replicated").version.index == 0
            first.kill()
            # The commit's content check goes to the surviving blob replica (it failed every commit before).
            for i in range(3):
                (checkpoint / "weights.bin").write_bytes(f"after {i}".encode())
                assert r.push(checkpoint, "replicated").version.index == i + 1
        # A metadata service whose only blob replica is down answers UNAVAILABLE itself: the message says what
        # it could not reach, not that the metadata service was unreachable.
        stranded = ServiceProcess(
            "mreg.metadata_service",
            ["--database-url", f"sqlite:///{tmp_path / 'm.db'}", "--blob-addr", first.address],
        ).start()
        try:
            with Registry.connect(
                stranded.address, second.address, entity="acme", project="vision", cache_dir=tmp_path / "c"
            ) as r:
                (checkpoint / "weights.bin").write_bytes(b"not verifiable")
                with pytest.raises(MregError) as refused:
                    r.push(checkpoint, "replicated")
            assert refused.value.code == "UNAVAILABLE" and refused.value.reason == "BLOB_SERVICE_UNAVAILABLE"
            assert "metadata service is unreachable" not in refused.value.message
            assert f"blob service at {first.address}" in refused.value.message, refused.value.message
        finally:
            stranded.stop()
    finally:
        for process in (metadata, first, second):
            process.stop()


def test_a_malformed_blob_replica_list_stops_the_metadata_service_at_start_up(tmp_path: Path) -> None:
    import subprocess
    import sys

    started = subprocess.run(
        [
            sys.executable,
            "-m",
            "mreg.metadata_service",
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            f"sqlite:///{tmp_path / 'm.db'}",
            "--blob-addr",
            "127.0.0.1:50052,not-an-address",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert started.returncode == 2, started.stderr
    assert "--blob-addr" in started.stderr and "'not-an-address'" in started.stderr


@pytest.mark.any_database
def test_the_cli_says_which_replicas_it_left_out_as_a_warning(servers, mreg, monkeypatch) -> None:
    monkeypatch.setenv("MREG_METADATA_ADDR", f"{servers.metadata.address},nosuchhost.invalid:7002")
    code, _, err = mreg("ls", "acme")

    assert code == 0, err
    [line] = [line for line in err.splitlines() if "nosuchhost.invalid" in line]
    assert line.startswith("mreg: warning: left out of ")
