"""The Alembic migrations build exactly the schema the ORM models describe."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from mreg.metadata_service.db import create_database_engine, upgrade_schema
from mreg.metadata_service.models import Base


def test_migrated_schema_matches_the_models(database_url: str, tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.db'}" if database_url.startswith("sqlite") else database_url
    engine = create_database_engine(url)
    upgrade_schema(engine)
    upgrade_schema(engine)  # idempotent: a restart does not re-run migrations
    with engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    engine.dispose()
    assert differences == []
