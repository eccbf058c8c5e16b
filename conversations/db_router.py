"""Send the reads of list endpoints to a replica, when one is configured.

Only code inside ``replica_reads()`` reads from the replica, so a client
that writes and then reads one object sees its write; lists may lag the
primary by the replica's delay. Off unless DATABASE_REPLICA_URL is set.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from django.conf import settings

_use_replica: ContextVar[bool] = ContextVar("use_replica", default=False)

REPLICA = "replica"


@contextmanager
def replica_reads() -> Iterator[None]:
    token = _use_replica.set(REPLICA in settings.DATABASES)
    try:
        yield
    finally:
        _use_replica.reset(token)


class ReplicaRouter:
    def db_for_read(self, model, **hints) -> str | None:
        return REPLICA if _use_replica.get() else None

    def db_for_write(self, model, **hints) -> str | None:
        return "default"

    def allow_relation(self, obj1, obj2, **hints) -> bool:
        return True

    def allow_migrate(self, db, app_label, model_name=None, **hints) -> bool:
        return db == "default"
