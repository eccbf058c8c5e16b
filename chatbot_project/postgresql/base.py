"""Django's PostgreSQL backend, with a pool that recovers from a failover at once.

psycopg's pool checks a connection before handing it out (Django turns
CONN_HEALTH_CHECKS into that check). When the check fails it tries the next
idle connection only after a growing pause (1, 2, 4 s...), so a pool whose
connections all died together (failover, restart, pg_terminate_backend)
makes requests wait out the pool timeout and answer 503 while the database
is up again. One dead connection is taken here as news about all of them:
the whole pool is checked at once, and fresh connections replace the dead.
"""

from functools import partial

from django.db.backends.postgresql import base
from psycopg_pool import ConnectionPool


def check_and_prune(pool: ConnectionPool, conn) -> None:
    try:
        ConnectionPool.check_connection(conn)
    except Exception:
        pool.check()
        raise


class DatabaseWrapper(base.DatabaseWrapper):
    @property
    def pool(self) -> ConnectionPool | None:
        pool = super().pool
        # ``_check`` is where psycopg_pool keeps the callable it was given.
        if pool is not None and pool._check is ConnectionPool.check_connection:
            pool._check = partial(check_and_prune, pool)
        return pool
