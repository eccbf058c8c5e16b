"""Read rows through a second, independent database connection.

A test wrapped in a transaction sees its own uncommitted writes, so it cannot
tell whether a view committed. This module opens a fresh connection to the
same database (the test database, during tests) outside Django's connection
handling: it sees only what has been committed.
"""

import json
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import psycopg
from django.db import connection, models


@contextmanager
def second_connection() -> Iterator[Any]:
    settings = connection.settings_dict
    if connection.vendor == "postgresql":
        conn = psycopg.connect(
            dbname=settings["NAME"],
            user=settings["USER"] or None,
            password=settings["PASSWORD"] or None,
            host=settings["HOST"] or None,
            port=settings["PORT"] or None,
            autocommit=True,
        )
    elif connection.vendor == "sqlite":
        conn = sqlite3.connect(settings["NAME"])
    else:
        raise NotImplementedError(connection.vendor)
    try:
        yield conn
    finally:
        conn.close()


def _where(model: type[models.Model], filters: dict[str, Any]) -> tuple[str, list[Any]]:
    placeholder = "%s" if connection.vendor == "postgresql" else "?"
    clauses, params = [], []
    for name, value in filters.items():
        field = model._meta.pk if name == "pk" else model._meta.get_field(name)
        clauses.append(f"{connection.ops.quote_name(field.column)} = {placeholder}")
        # The field's own conversion, so a UUID is matched as this backend stores it.
        params.append(field.get_db_prep_value(value, connection, prepared=False))
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


def _decode(field: models.Field, value: Any) -> Any:
    """Normalize what the raw drivers return to the types the ORM would give."""
    if value is None:
        return None
    target = field.target_field if field.is_relation else field
    if isinstance(target, models.UUIDField) and not isinstance(value, uuid.UUID):
        return uuid.UUID(value)
    if isinstance(field, models.JSONField) and isinstance(value, str):
        return json.loads(value)
    if isinstance(field, models.DateTimeField) and isinstance(value, str):
        return datetime.fromisoformat(value).replace(tzinfo=UTC)
    return value


def fetch_rows(model: type[models.Model], **filters: Any) -> list[dict[str, Any]]:
    """Committed rows of ``model`` matching ``filters`` (field name -> value), keyed by attname."""
    fields = list(model._meta.concrete_fields)
    columns = ", ".join(connection.ops.quote_name(f.column) for f in fields)
    where, params = _where(model, filters)
    sql = f"SELECT {columns} FROM {connection.ops.quote_name(model._meta.db_table)}{where}"
    with second_connection() as conn:
        rows = conn.execute(sql, params).fetchall()
    return [
        {field.attname: _decode(field, value) for field, value in zip(fields, row, strict=True)}
        for row in rows
    ]


def fetch_row(model: type[models.Model], pk: Any) -> dict[str, Any] | None:
    """The committed row with primary key ``pk``, or None."""
    rows = fetch_rows(model, pk=pk)
    return rows[0] if rows else None


def count_rows(model: type[models.Model], **filters: Any) -> int:
    return len(fetch_rows(model, **filters))
