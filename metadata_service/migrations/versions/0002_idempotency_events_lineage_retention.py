"""idempotency, events, lineage, retention

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:

    event_counter = op.create_table(
        "event_counter",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("last_sequence", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    # The single counter row that every mutation's events are numbered from.
    op.bulk_insert(event_counter, [{"id": 1, "last_sequence": 0}])
    op.create_table(
        "events",
        sa.Column("sequence", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("resource", sa.String(length=600), nullable=False),
        sa.Column(
            "before", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=True
        ),
        sa.Column(
            "after", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=True
        ),
        sa.Column("actor", sa.String(length=256), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("sequence"),
    )
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_events_resource"), ["resource"], unique=False)

    op.create_table(
        "request_records",
        sa.Column("request_id", sa.String(length=128), nullable=False),
        sa.Column("method", sa.String(length=64), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column(
            "result", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=True
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("request_id"),
    )
    with op.batch_alter_table("request_records", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_request_records_created_at"), ["created_at"], unique=False)

    op.create_table(
        "run_inputs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run", sa.String(length=400), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["version_id"],
            ["versions.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("run", "version_id", name="uq_run_inputs_run_version"),
    )
    with op.batch_alter_table("run_inputs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_run_inputs_run"), ["run"], unique=False)
        batch_op.create_index(batch_op.f("ix_run_inputs_version_id"), ["version_id"], unique=False)

    with op.batch_alter_table("collections", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "tags",
                sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
                server_default="[]",
                nullable=False,
            )
        )
        batch_op.add_column(
            sa.Column(
                "protected_aliases",
                sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
                server_default="[]",
                nullable=False,
            )
        )
        batch_op.add_column(sa.Column("retention_keep_last", sa.Integer(), nullable=True))

    with op.batch_alter_table("versions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("producer_run", sa.String(length=400), nullable=True))
        batch_op.create_index(batch_op.f("ix_versions_producer_run"), ["producer_run"], unique=False)


def downgrade() -> None:

    with op.batch_alter_table("versions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_versions_producer_run"))
        batch_op.drop_column("producer_run")

    with op.batch_alter_table("collections", schema=None) as batch_op:
        batch_op.drop_column("retention_keep_last")
        batch_op.drop_column("protected_aliases")
        batch_op.drop_column("tags")

    with op.batch_alter_table("run_inputs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_run_inputs_version_id"))
        batch_op.drop_index(batch_op.f("ix_run_inputs_run"))

    op.drop_table("run_inputs")
    with op.batch_alter_table("request_records", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_request_records_created_at"))

    op.drop_table("request_records")
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_events_resource"))

    op.drop_table("events")
    op.drop_table("event_counter")
