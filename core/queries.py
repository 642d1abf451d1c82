"""The named-query loader: each floor keeps its SQL in a `.sql` file beside the code that runs it.

A file holds queries under `-- name: x` headers (Procrastinate style); a module loads its file
once at import (`QUERIES = load_queries(Path(__file__).with_name("queries.sql"))`), and callers
write `QUERIES["claim_batch"]`: a typo is a KeyError at import of the caller's test, not a
silently different statement.
"""

from __future__ import annotations

import re
from pathlib import Path

_HEADER = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


def load_queries(path: Path) -> dict[str, str]:
    """Split a named-query file into {name: sql}; the comment lines under a header are kept."""
    text = path.read_text()
    parts = _HEADER.split(text)
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in queries:
            raise ValueError(f"query {name!r} defined twice in {path}")
        queries[name] = body.strip().rstrip(";")
    return queries

