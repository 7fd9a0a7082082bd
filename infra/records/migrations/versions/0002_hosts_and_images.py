"""Hosts and the cluster's image catalog: host_id on sandboxes, production VMs and runs, a
sandbox's lost mark, a production VM's address, and the hosts and images tables.

fluid before Alembic added these piecemeal (create_all and nullable ALTERs at engine creation),
so a database it made may hold any part of them already: each step is taken only if its
result is missing. The fingerprint table that scheme kept goes.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

NEW_COLUMNS = (
    ("sandboxes", "host_id", True),
    ("sandboxes", "lost", False),
    ("production_vms", "host_id", True),
    ("production_vms", "address", False),
    ("agent_runs", "host_id", True),
)
NEW_TABLES = ("hosts", "images", "image_parts", "image_copies")


def _create_tables(have: set[str]) -> None:
    if "hosts" not in have:
        op.create_table(
            "hosts",
            sa.Column("id", sa.String(), nullable=False),
            sa.Column("work_queue", sa.String(), nullable=False),
            sa.Column("state", sa.String(), nullable=False),
            sa.Column("max_sandboxes", sa.Integer(), nullable=False),
            sa.Column("labels", sa.Text(), nullable=False),
            sa.Column("domain_type", sa.String(), nullable=True),
            sa.Column("last_heartbeat", sa.DateTime(timezone=True), nullable=True),
            sa.Column("state_message", sa.String(), nullable=False),
            sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
            sa.PrimaryKeyConstraint("id"),
        )
    if "images" not in have:
        op.create_table(
            "images",
            sa.Column("name", sa.String(), nullable=False),
            sa.Column("version", sa.String(), nullable=False),
            sa.Column("origin_version", sa.String(), nullable=False),
            sa.Column("published_by", sa.String(), nullable=False),
            sa.Column("published_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("manifest", sa.Text(), nullable=False),
            sa.PrimaryKeyConstraint("name", "version"),
        )
        op.create_index("ix_images_published_by", "images", ["published_by"])
    if "image_parts" not in have:
        op.create_table(
            "image_parts",
            sa.Column("name", sa.String(), nullable=False),
            sa.Column("version", sa.String(), nullable=False),
            sa.Column("file", sa.String(), nullable=False),
            sa.Column("size_bytes", sa.Integer(), nullable=False),
            sa.Column("sha256", sa.String(), nullable=False),
            sa.PrimaryKeyConstraint("name", "version", "file"),
        )
        op.create_index("ix_image_parts_sha256", "image_parts", ["sha256"])
    if "image_copies" not in have:
        op.create_table(
            "image_copies",
            sa.Column("host_id", sa.String(), nullable=False),
            sa.Column("name", sa.String(), nullable=False),
            sa.Column("version", sa.String(), nullable=False),
            sa.Column("verified_at", sa.DateTime(timezone=True), nullable=False),
            sa.PrimaryKeyConstraint("host_id", "name", "version"),
        )


def upgrade() -> None:
    insp = sa.inspect(op.get_bind())
    for table, column, indexed in NEW_COLUMNS:
        if column not in {c["name"] for c in insp.get_columns(table)}:
            op.add_column(table, sa.Column(column, sa.String(), nullable=True))
        index = f"ix_{table}_{column}"
        if indexed and index not in {i["name"] for i in insp.get_indexes(table)}:
            op.create_index(index, table, [column])
    _create_tables(set(insp.get_table_names()))
    if insp.has_table("fluid_schema"):
        op.drop_table("fluid_schema")


def downgrade() -> None:
    for table in reversed(NEW_TABLES):
        op.drop_table(table)
    for table, column, indexed in reversed(NEW_COLUMNS):
        if indexed:
            op.drop_index(f"ix_{table}_{column}", table_name=table)
        with op.batch_alter_table(table) as batch:
            batch.drop_column(column)
