"""A resolve is never staler than the database, whichever replica answers it.

Resolves keep committed manifests, and their last answer per reference, in memory between
calls; everything they return (aliases, latest, metadata, tags, state) must reflect the
last change made through any replica by the time that change was acknowledged.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, event, text

from mreg.client import Registry
from mreg.client.errors import NotFound
from mreg.metadata_service import server as metadata_server
from mreg.metadata_service.catalog.resolution import ManifestCache
from mreg.metadata_service.config import MetadataConfig
from mreg.metadata_service.db import create_database_engine
from mreg.metadata_service.manifest import FileEntry
from mreg.metadata_service.repository import DriverReads, ResolveReads
from mreg.metadata_service.unit_of_work import Database
from tests.conftest import Servers


@pytest.fixture
def second_replica(servers: Servers) -> Iterator[Registry]:
    """A client of another metadata server on the same database and blob service."""
    replica = metadata_server.start(
        MetadataConfig(
            listen="127.0.0.1:0", database_url=servers.database_url, blob_addr=servers.blob.address, migrate=False
        )
    )
    with Registry.connect(replica.address, servers.blob.address, entity="acme", project="vision") as client:
        yield client
    replica.stop(grace=None)


def _push(registry: Registry, tmp_path: Path, name: str, content: bytes) -> int:
    folder = tmp_path / content.hex()[:16]
    folder.mkdir()
    (folder / "weights.bin").write_bytes(content)
    return registry.push(folder, name).version.index or 0


def test_a_resolve_through_one_replica_sees_every_change_made_through_another(
    registry: Registry, second_replica: Registry, tmp_path: Path, unique: str
) -> None:
    name = f"fresh-{unique}"
    _push(registry, tmp_path, name, b"zero")
    _push(registry, tmp_path, name, b"one")
    model = f"fresh-model-{unique}"
    registry.create_registered_model(model)
    registry.link(f"{name}:v0", model)

    # Warm the second replica's resolves (its answers and manifests) of every reference asked again below.
    assert second_replica.resolve(f"{name}:latest").version.index == 1
    assert second_replica.resolve(name).version.index == 1
    assert second_replica.resolve(f"{name}:v0").version.metadata == {}
    assert second_replica.resolve(f"{name}:v1").version.index == 1
    assert second_replica.resolve(f"{model}:latest").version.index == 0
    assert second_replica.resolve(f"{model}:v0").version.aliases == ()
    with pytest.raises(NotFound):
        second_replica.resolve(f"{name}:best")

    registry.set_alias(f"{name}:v0", "best")
    assert second_replica.resolve(f"{name}:best").version.index == 0
    assert second_replica.resolve(f"{name}:v0").version.aliases == ("best",)
    # A registered model's answer also depends on its linked version's artifact, changed here, not the model.
    assert second_replica.resolve(f"{model}:v0").version.aliases == ("best",)

    registry.set_alias(f"{model}:v0", "production")
    assert second_replica.resolve(f"{model}:production").version.index == 0
    assert second_replica.resolve(f"{model}:v0").link.aliases == ("latest", "production")

    registry.update_version(f"{name}:v0", metadata={"accuracy": 0.9}, add_tags=["audited"])
    seen = second_replica.resolve(f"{name}:v0").version
    assert seen.metadata == {"accuracy": 0.9}
    assert seen.tags == ("audited",)
    # Through the registered model too: the link shows its source version as it is now.
    through_link = second_replica.resolve(f"{model}:v0")
    assert through_link.version.metadata == {"accuracy": 0.9}
    assert through_link.version.aliases == ("best",)

    _push(registry, tmp_path, name, b"two")
    assert second_replica.resolve(name).version.index == 2

    registry.delete_version(f"{name}:v1")
    with pytest.raises(NotFound):
        second_replica.resolve(f"{name}:v1")
    registry.delete_link(f"{model}:v0")
    with pytest.raises(NotFound):
        second_replica.resolve(f"{model}:v0")
    # The manifest a resolve returns is the version's own, cached or not.
    assert [f.path for f in second_replica.resolve(f"{name}:v2").version.manifest] == ["weights.bin"]
    assert second_replica.resolve(f"{name}:v2").version.manifest == registry.resolve(f"{name}:v2").version.manifest


def _manifest(count: int, tag: str) -> tuple[FileEntry, ...]:
    return tuple(FileEntry(f"{tag}/{i}", "0" * 64, i, None) for i in range(count))


def test_the_manifest_cache_holds_at_most_its_bound_of_entries_dropping_the_least_recently_used() -> None:
    cache = ManifestCache(max_entries=10)
    cache.put("a", _manifest(4, "a"))
    cache.put("b", _manifest(4, "b"))
    assert cache.get("a") == _manifest(4, "a")  # a is now the most recently used
    cache.put("c", _manifest(4, "c"))  # 3 x (4 entries + 1) > 10: b, the least recently used, goes
    assert cache.get("b") is None
    assert cache.get("a") == _manifest(4, "a")
    assert cache.get("c") == _manifest(4, "c")
    cache.put("huge", _manifest(11, "huge"))  # larger than the whole bound: never kept
    assert cache.get("huge") is None
    assert cache.get("a") is not None and cache.get("c") is not None


def test_the_manifest_cache_bounds_the_number_of_empty_manifests_too() -> None:
    # A version of an empty directory has an empty manifest; weighing it 0 let any number stay in memory.
    cache = ManifestCache(max_entries=10)
    for i in range(100):
        cache.put(f"empty-{i}", ())
    kept = [i for i in range(100) if cache.get(f"empty-{i}") is not None]
    assert 0 < len(kept) <= 10 and kept == list(range(100 - len(kept), 100))


def test_a_repeated_resolve_while_only_other_collections_change_reads_only_its_collections_last_events(
    servers: Servers, tmp_path: Path, unique: str
) -> None:
    replica = metadata_server.start(
        MetadataConfig(
            listen="127.0.0.1:0", database_url=servers.database_url, blob_addr=servers.blob.address, migrate=False
        )
    )
    statements: list[str] = []
    sqlite = replica.engine.dialect.name == "sqlite"
    if sqlite:
        # SQLite's own trace: every statement the database runs, sent through SQLAlchemy or straight
        # through the driver.
        event.listen(replica.engine, "checkout", lambda driver, *_: driver.set_trace_callback(statements.append))
    else:
        event.listen(replica.engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    try:
        with Registry.connect(replica.address, servers.blob.address, entity="acme", project="vision") as client:
            name = f"repeat-{unique}"
            _push(client, tmp_path, name, b"repeat")
            first = client.resolve(f"{name}:latest")
            # Other collections change meanwhile: a new version of another artifact, an alias moved there.
            _push(client, tmp_path, f"elsewhere-{unique}", b"elsewhere")
            client.set_alias(f"elsewhere-{unique}:v0", "best")
            statements.clear()
            again = client.resolve(f"{name}:latest")
            answered_from_memory = [statement for statement in statements if statement != "BEGIN"]  # SQLite's
            # Its own collection changes: the next resolve reads it again and sees the change.
            client.set_alias(f"{name}:v0", "best")
            statements.clear()
            after_change = client.resolve(f"{name}:latest")
            read_again = [statement for statement in statements if statement != "BEGIN"]
    finally:
        replica.stop(grace=None)
    assert again == first
    if sqlite:
        assert len(answered_from_memory) == 1 and "events" in answered_from_memory[0], answered_from_memory
    else:
        # The check goes straight through the driver, past SQLAlchemy's events: nothing else was sent.
        assert answered_from_memory == [], answered_from_memory
    assert after_change.version.aliases == ("latest", "best")
    assert any("FROM collections" in statement for statement in read_again), read_again


def test_a_change_whose_event_names_no_collection_is_seen_as_a_change_to_every_collection(
    servers: Servers, registry: Registry, second_replica: Registry, tmp_path: Path, unique: str
) -> None:
    # While replicas are upgraded one by one, one not yet upgraded writes events without a collection.
    name = f"mixed-fleet-{unique}"
    _push(registry, tmp_path, name, b"zero")
    _push(registry, tmp_path, name, b"one")
    assert second_replica.resolve(f"{name}:v0").version.aliases == ()  # kept by the second replica

    registry.set_alias(f"{name}:v0", "best")
    engine = create_engine(servers.database_url)
    try:
        with engine.begin() as connection:
            # As the older replica would have written it.
            connection.execute(
                text("UPDATE events SET collection_id = NULL WHERE sequence = (SELECT max(sequence) FROM events)")
            )
        assert second_replica.resolve(f"{name}:v0").version.aliases == ("best",)
    finally:
        engine.dispose()


def test_the_check_sent_through_the_driver_reads_what_the_regular_read_reads(
    servers: Servers, registry: Registry, tmp_path: Path, unique: str
) -> None:
    # The check of a resolve answered from memory bypasses SQLAlchemy; it must see the same last events.
    first, second = f"driver-a-{unique}", f"driver-b-{unique}"
    _push(registry, tmp_path, first, b"driver a")
    _push(registry, tmp_path, second, b"driver b")
    registry.set_alias(f"{second}:v0", "best")
    engine = create_database_engine(servers.database_url)
    database = Database(engine)
    try:
        with engine.begin() as connection:
            ids = dict(
                connection.execute(
                    text("SELECT name, id FROM collections WHERE name IN (:a, :b)"), {"a": first, "b": second}
                ).all()
            )
        pairs = [(ids[first], ids[first]), (ids[first], ids[second]), (ids[second], ids[first]), (0, 0), (-1, 10**9)]

        def agree() -> list[tuple[int, int] | None]:
            regular = [database.read(functools.partial(_regular_last_events, pair=p)) for p in pairs]
            driver = [database.last_events(p) for p in pairs]
            assert driver == regular
            return driver

        before = agree()
        # More checks at once than the connections the check keeps: the others borrow from the pool.
        at_once = 4 * DriverReads.KEPT_CONNECTIONS
        together = threading.Barrier(at_once)

        def check_with_the_others(pair: tuple[int, int]) -> list[tuple[int, int] | None]:
            together.wait(timeout=30)
            return [database.last_events(pair) for _ in range(20)]

        with ThreadPoolExecutor(at_once) as pool:
            answers = list(pool.map(check_with_the_others, [pairs[i % len(pairs)] for i in range(at_once)]))
        assert answers == [[before[i % len(pairs)]] * 20 for i in range(at_once)]
        assert before[0] is not None and before[1] is not None and before[1][1] > before[0][1]  # b changed last
        with engine.begin() as connection:
            # An event with no collection, as a replica not yet upgraded writes it, counts for every collection.
            connection.execute(
                text("UPDATE events SET collection_id = NULL WHERE sequence = (SELECT max(sequence) FROM events)")
            )
        after = agree()
        assert after[0] is not None and after[0][1] == after[0][0]
    finally:
        database.close()


def _regular_last_events(connection: Any, pair: tuple[int, int]) -> tuple[int, int]:
    return ResolveReads(connection).last_events(pair)


def test_a_check_the_driver_fails_answers_none_and_discards_its_connection(tmp_path: Path) -> None:
    # A database without the events table: the driver refuses the statement, as it would a dropped connection.
    engine = create_database_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    try:
        reads = DriverReads(engine)
        with engine.connect() as connection:
            before = connection.connection.driver_connection
        assert reads.last_events((1, 2)) is None
        with engine.connect() as connection:
            assert connection.connection.driver_connection is not before  # the failed one was not put back
    finally:
        engine.dispose()


def test_a_check_whose_connection_postgresql_dropped_answers_again_on_a_new_one(servers: Servers) -> None:
    # The check keeps its connections apart from the pool: one the database dropped must not be kept.
    if not servers.database_url.startswith("postgresql"):
        pytest.skip("dropping another session's connection is PostgreSQL's (pg_terminate_backend)")
    engine = create_database_engine(servers.database_url)
    database = Database(engine)
    try:
        answer = database.last_events((0, 0))
        assert answer is not None
        with engine.connect() as admin:
            dropped = admin.execute(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            ).scalar_one()
        assert dropped >= 1
        # The dropped connection fails its check (a resolve then reads through the pool, which reconnects);
        # the next checks run on a new connection.
        answers = [database.last_events((0, 0)) for _ in range(3)]
        assert answers[1] is not None and answers[2] is not None
    finally:
        database.close()
