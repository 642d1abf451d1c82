"""The scheduler's named queries (`scheduler/queries.sql`), loaded once."""

from __future__ import annotations

from pathlib import Path

from core.queries import load_queries

QUERIES = load_queries(Path(__file__).with_name("queries.sql"))
