"""The task queue of a test run: beside the test database, never the one DATABASE_URL names.

Settings build huey's storage from TASKS_DATABASE_URL at import time, before
pytest-django makes the test database, so a test run would enqueue into the
queue of the development or production database. ``use_test_queue`` (called by
tests/conftest.py before any test database exists) rebuilds the storage:

- PostgreSQL: the queue's tables are in the test database. The storage
  connects with the default database's settings as they are when it
  connects, which name the test database once pytest-django has made it
  (already while it is migrated, when ``post_migrate`` makes the tables).
- SQLite: the queue is a file beside the test database, empty at the start of
  the run and removed at its end, as the test database is.

``worker_queue_env`` gives a ``manage.py worker`` subprocess the same queue.
"""

from pathlib import Path

import dj_database_url
import psycopg
import pytest
from django.conf import settings
from django.db import connections
from huey.storage import PostgresStorage, SqliteStorage

from conversations.tasks import configured_huey

# How the settings hand connection parameters to huey's PostgresStorage.
_POSTGRES_PARAMS = ("dsn", "host", "port", "dbname", "user", "password")


def _connect_to_test_database() -> psycopg.Connection:
    db = connections["default"].settings_dict
    if db["NAME"] == dj_database_url.parse(settings.DATABASE_URL)["NAME"]:
        raise RuntimeError("The task queue was used before the test database was made")
    params = {"HOST": "host", "PORT": "port", "USER": "user", "PASSWORD": "password"}
    return psycopg.connect(
        dbname=db["NAME"], **{param: str(db[key]) for key, param in params.items() if db.get(key)}
    )


def _queue_file() -> Path:
    test_db = Path(connections["default"].settings_dict["TEST"]["NAME"])
    return test_db.with_name(f"{test_db.stem}-tasks.sqlite3")


def _remove_queue_file(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)


def use_test_queue() -> None:
    """Point huey's storage at this run's own queue (see the module docstring)."""
    huey = configured_huey()
    if huey is None:
        return
    kwargs = dict(huey.storage_kwargs)
    vendor = connections["default"].vendor
    if isinstance(huey.storage, PostgresStorage) and vendor == "postgresql":
        for param in _POSTGRES_PARAMS:
            kwargs.pop(param, None)
        kwargs["connection"] = _connect_to_test_database
    elif isinstance(huey.storage, SqliteStorage) and vendor == "sqlite":
        kwargs["filename"] = str(_queue_file())
        _remove_queue_file(_queue_file())
    elif isinstance(huey.storage, PostgresStorage | SqliteStorage):
        raise pytest.UsageError(
            "TASKS_DATABASE_URL names another kind of database than DATABASE_URL; "
            "tests keep the task queue with the test database: unset it"
        )
    else:
        return
    huey.storage.close()
    huey.storage_kwargs = kwargs
    huey.storage = huey.create_storage()


def remove_test_queue() -> None:
    """At the end of the run: the SQLite queue file goes (PostgreSQL's goes with its database)."""
    huey = configured_huey()
    if huey is not None and isinstance(huey.storage, SqliteStorage):
        huey.storage.close()
        _remove_queue_file(Path(huey.storage.filename))


def worker_queue_env(database_url: str) -> dict[str, str]:
    """Environment that gives a worker on ``database_url`` (the test database) this queue."""
    huey = configured_huey()
    if huey is not None and isinstance(huey.storage, SqliteStorage):
        return {"TASKS_DATABASE_URL": database_url, "TASKS_SQLITE_PATH": huey.storage.filename}
    return {"TASKS_DATABASE_URL": database_url}
