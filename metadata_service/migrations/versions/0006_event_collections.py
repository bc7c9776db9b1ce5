"""the collection each event changed, so a resolve can tell whether its collections changed

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # No foreign key: the events of a deleted collection stay in the log. Events written before this
    # revision, or by a replica not yet upgraded, have none (NULL), which a resolve treats as a change
    # to every collection, as it treated every event before.
    with op.batch_alter_table("events") as batch:
        batch.add_column(sa.Column("collection_id", sa.Integer(), nullable=True))
    op.create_index("ix_events_collection_sequence", "events", ["collection_id", "sequence"])


def downgrade() -> None:
    op.drop_index("ix_events_collection_sequence", table_name="events")
    with op.batch_alter_table("events") as batch:
        batch.drop_column("collection_id")
