"""A test run's task queue is its own: in the test database, never the one DATABASE_URL names.

See tests/task_queue.py: huey's storage is built from the settings at import
time, before the test database exists, so the tests point it at the test
database (PostgreSQL) or at a file beside it (SQLite).
"""

import sqlite3
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection
from huey.contrib.djhuey import HUEY

from conversations import runs
from conversations.tasks import enqueue_run
from tests.db import second_connection


def tasks_in_the_test_queue() -> int:
    """Tasks of this queue, read without huey, where the test database keeps them."""
    if connection.vendor == "postgresql":
        with second_connection() as conn:
            sql = "SELECT count(*) FROM huey_task WHERE queue = %s"
            return conn.execute(sql, [HUEY.name]).fetchone()[0]
    test_db = Path(connection.settings_dict["NAME"])
    with sqlite3.connect(test_db.with_name(f"{test_db.stem}-tasks.sqlite3")) as conn:
        return conn.execute("SELECT count(*) FROM task WHERE queue = ?", [HUEY.name]).fetchone()[0]


@pytest.mark.django_db
def test_the_queue_is_kept_with_the_test_database():
    if connection.vendor == "postgresql":
        with HUEY.storage.db() as cursor:
            cursor.execute("SELECT current_database()")
            assert cursor.fetchone()[0] == connection.settings_dict["NAME"]
    else:
        test_db = Path(connection.settings_dict["NAME"])
        assert Path(HUEY.storage.filename) == test_db.with_name(f"{test_db.stem}-tasks.sqlite3")
        assert HUEY.storage.filename != settings.HUEY["filename"]


@pytest.mark.django_db
def test_enqueued_work_lands_in_the_test_queue(thread):
    run = runs.run_start(thread=thread, input="later", provider="echo", model="echo-1", queued=True)
    before = tasks_in_the_test_queue()

    enqueue_run(run)

    assert tasks_in_the_test_queue() == before + 1
