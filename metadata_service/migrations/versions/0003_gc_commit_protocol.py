"""garbage collection state and condemned blobs, so sweeps never race commits

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    gc_state = op.create_table(
        "gc_state",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("epoch", sa.BigInteger(), nullable=False),
        sa.Column("pruned_through", sa.BigInteger(), nullable=False),
        sa.Column("lease_owner", sa.String(length=64), nullable=True),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    # The single row that commits share-lock and sweeps lock exclusively.
    op.bulk_insert(gc_state, [{"id": 1, "epoch": 0, "pruned_through": 0}])
    op.create_table(
        "condemned_blobs",
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("deleted_epoch", sa.BigInteger(), nullable=True),
        sa.Column("condemned_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("digest"),
    )
    with op.batch_alter_table("condemned_blobs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_condemned_blobs_deleted_epoch"), ["deleted_epoch"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("condemned_blobs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_condemned_blobs_deleted_epoch"))
    op.drop_table("condemned_blobs")
    op.drop_table("gc_state")
