"""The ``gunicorn_server`` fixture: load with ``pytest_plugins = ["tests.conftest_gunicorn"]``."""

from collections.abc import Iterator

import pytest

from tests.gunicorn_server import GunicornServer, gunicorn_process


@pytest.fixture(scope="module")
def gunicorn_server(django_db_setup) -> Iterator[GunicornServer]:
    """One gunicorn for the module, on the test database (tests commit what it reads)."""
    with gunicorn_process() as server:
        yield server
