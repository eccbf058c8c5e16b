"""Several writes sent to PostgreSQL in one round trip, for the hottest paths.

Statements sent together in one simple query run as one implicit
transaction: all are committed when the call returns, or none is. That
saves the round trips of BEGIN, of each statement and of COMMIT, and the
ORM's work of building each statement. It needs client-side parameter
binding, Django's default with psycopg 3 (the extended protocol of
server-side binding takes one statement at a time).
"""

from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any

from django.db import connection, models, transaction

Statement = tuple[str, list[Any]]


def insert(objs: Sequence[models.Model], where: Statement | None = None) -> Statement:
    """INSERT ``objs`` (of one model), valued as ``save()`` would; auto ids left to the database.

    With ``where`` (a condition and its parameters), the rows are inserted
    only if it holds: INSERT ... SELECT ... WHERE. For several objects they
    are selected from a VALUES list, whose column types PostgreSQL infers
    from the values: fine for UUIDs, numbers, times and JSON (psycopg casts
    them), but a column that is NULL in every row would be text. The objects
    count as saved from here on: callers drop them if nothing was inserted.
    """
    meta = objs[0]._meta
    fields = [f for f in meta.concrete_fields if f is not meta.auto_field and not f.generated]
    row = ", ".join(["%s"] * len(fields))
    params = [
        field.get_db_prep_save(field.pre_save(obj, add=True), connection)
        for obj in objs
        for field in fields
    ]
    columns = ", ".join(connection.ops.quote_name(field.column) for field in fields)
    # Table and column names come from the model; values are parameters.
    sql = f"INSERT INTO {meta.db_table} ({columns}) "
    if where is None:
        sql += "VALUES " + ", ".join([f"({row})"] * len(objs))
    else:
        condition, condition_params = where
        if len(objs) == 1:
            sql += f"SELECT {row} WHERE {condition}"
        else:
            rows = ", ".join([f"({row})"] * len(objs))
            sql += f"SELECT * FROM (VALUES {rows}) AS rows WHERE {condition}"  # noqa: S608
        params += condition_params
    for obj in objs:
        obj._state.adding = False
        obj._state.db = connection.alias
    return sql, params


def update(
    obj: models.Model, field_names: Sequence[str], where: Statement | None = None
) -> Statement:
    """UPDATE ``obj``'s row with the named fields, valued as ``save(update_fields=...)`` would.

    With ``where`` (a condition on the row as it was, and its parameters),
    only if that holds too.
    """
    meta = obj._meta
    fields = [meta.get_field(name) for name in field_names]
    assignments = ", ".join(f"{connection.ops.quote_name(field.column)} = %s" for field in fields)
    params = [
        field.get_db_prep_save(field.pre_save(obj, add=False), connection) for field in fields
    ]
    pk = meta.pk
    # Table and column names come from the model; values are parameters.
    sql = f"UPDATE {meta.db_table} SET {assignments} WHERE {pk.column} = %s"  # noqa: S608
    params.append(pk.get_db_prep_value(obj.pk, connection))
    if where is not None:
        condition, condition_params = where
        sql += f" AND ({condition})"
        params += condition_params
    return sql, params


def send(statements: Sequence[Statement]) -> list[int]:
    """Run ``statements`` in one round trip, in the caller's transaction.

    Returns each statement's row count.
    """
    sql = "; ".join(statement for statement, _ in statements)
    params = [param for _, statement_params in statements for param in statement_params]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        counts = [cursor.rowcount]
        while cursor.nextset():
            counts.append(cursor.rowcount)
        return counts


def execute_together(statements: Sequence[Statement]) -> int:
    """Run ``statements`` in one round trip, committed on return; the last one's row count."""
    return execute_each(statements)[-1]


def execute_each(statements: Sequence[Statement]) -> list[int]:
    """``execute_together``, returning each statement's row count.

    Refuses to run inside a transaction, where nothing would be committed on
    return; inside a test's transaction it runs in a savepoint, so that a
    failed statement leaves the test's transaction usable.
    """
    scope = transaction.atomic(durable=True) if connection.in_atomic_block else nullcontext()
    with scope:
        return send(statements)
