"""The work pool prepares server-side statements only when asked (`run` asks where DATABASE_URL
keeps a session; tests/test_poolers.py runs the daemon behind a transaction pooler, where a
prepared statement would collide)."""

from __future__ import annotations

from core.db import PREPARE_THRESHOLD, create_pool


async def test_the_pool_prepares_only_when_asked(db_url: str) -> None:
    """`run` asks for prepared statements only where DATABASE_URL keeps a session (no
    LISTEN_DATABASE_URL); the transaction pooler tests above run with one and would collide."""
    for prepare, expected in ((True, 1), (False, 0)):
        pool = create_pool(db_url, 2, prepare=prepare)
        await pool.open()
        try:
            async with pool.connection() as conn:
                for _ in range(PREPARE_THRESHOLD + 1):
                    await conn.execute("SELECT count(*) FROM worker.events WHERE id = %s", (1,))
                cur = await conn.execute("SELECT count(*) FROM pg_prepared_statements")
                assert (await cur.fetchone()) == (expected,)
        finally:
            await pool.close()
