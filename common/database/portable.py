"""Helpers for SQL both engines run unchanged."""

from __future__ import annotations

from collections.abc import Sequence


def upsert(table: str, columns: Sequence[str], key: Sequence[str]) -> str:
    """INSERT a row, or update the row with the same `key` columns (what SQLite's INSERT OR REPLACE did for a
    primary key), in the `ON CONFLICT ... DO UPDATE` form SQLite and PostgreSQL share."""
    marks = ", ".join("?" for _ in columns)
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c not in key)
    action = f"DO UPDATE SET {updates}" if updates else "DO NOTHING"
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks}) ON CONFLICT ({', '.join(key)}) {action}"
