"""Keyset paging: ``limit``, ``order``, ``after`` and ``before``.

Pages are cut on ``(created_at, id)``, so a page costs the same at any depth
and rows inserted meanwhile never shift a page. ``has_more`` tells whether
more items lie beyond the page in the direction of travel: past ``last_id``
normally, before ``first_id`` when paging with ``before`` alone.
"""

import uuid
from dataclasses import dataclass
from typing import Any

from django.core.exceptions import FullResultSet
from django.db.models import BooleanField, QuerySet
from django.db.models.expressions import Expression
from rest_framework.exceptions import ValidationError
from rest_framework.pagination import BasePagination
from rest_framework.request import Request
from rest_framework.response import Response

DEFAULT_LIMIT = 20
MAX_LIMIT = 100
_NO_SUCH_ITEM = "No item with this id in the list."


@dataclass(frozen=True)
class PageParams:
    limit: int
    descending: bool
    after: Any
    before: Any


class _Beyond(Expression):
    """Rows that come after the cursor item in the chosen order.

    One row-value comparison, ``(created_at, id) < (cursor's created_at,
    cursor id)``, which PostgreSQL and SQLite both turn into a range scan of
    the (…, created_at, id) index. The cursor's timestamp is a subquery
    under the list's own conditions, so a page after a cursor is one query
    like the first, and a cursor missing from the list (or someone else's)
    makes the subquery NULL and the page empty.
    """

    output_field = BooleanField()

    def __init__(self, scope: QuerySet, cursor_id: uuid.UUID, descending: bool) -> None:
        super().__init__()
        self.scope = scope
        self.cursor_id = cursor_id
        self.descending = descending

    def as_sql(self, compiler, connection) -> tuple[str, tuple]:
        meta = self.scope.model._meta
        quote = connection.ops.quote_name
        table = quote(meta.db_table)
        created_at = f"{table}.{quote(meta.get_field('created_at').column)}"
        pk = f"{table}.{quote(meta.pk.column)}"
        cursor_id = meta.pk.get_db_prep_value(self.cursor_id, connection)
        sql, params = self._cursor_time(compiler, connection, table, created_at, pk, cursor_id)
        op = "<" if self.descending else ">"
        return f"({created_at}, {pk}) {op} (({sql}), %s)", (*params, cursor_id)

    def _cursor_time(self, compiler, connection, table, created_at, pk, cursor_id):
        query = self.scope.query
        joined = (alias for alias in query.alias_map if alias != query.base_table)
        if any(query.alias_refcount[alias] for alias in joined):
            # Conditions across a join: let Django build the whole subquery.
            subquery = self.scope.filter(pk=self.cursor_id).values("created_at").order_by()[:1]
            return subquery.query.get_compiler(connection=connection).as_sql()
        # One table, the list's own: its conditions compile as they stand,
        # with no second queryset to clone and compile on every page.
        try:
            where, params = compiler.compile(query.where)
        except FullResultSet:
            where, params = "", ()
        conditions = f"{pk} = %s AND ({where})" if where else f"{pk} = %s"
        sql = f"SELECT {created_at} FROM {table} WHERE {conditions}"  # noqa: S608 - quoted names
        return sql, (cursor_id, *params)


class KeysetPagination(BasePagination):
    """The contract's list paging. Views set ``default_order`` ("asc" or "desc")."""

    def paginate_queryset(self, queryset: QuerySet, request: Request, view=None) -> list:
        params = self._params(request, getattr(view, "default_order", "desc"))
        descending = params.descending
        ordering = ("-created_at", "-id") if descending else ("created_at", "id")
        backwards = ("created_at", "id") if descending else ("-created_at", "-id")

        page_query = queryset
        cursors = {}
        if params.after is not None:
            cursors["after"] = cursor = self._cursor(queryset, params.after, "after")
            page_query = page_query.filter(_Beyond(queryset, cursor, descending))
        if params.before is not None:
            cursors["before"] = cursor = self._cursor(queryset, params.before, "before")
            page_query = page_query.filter(_Beyond(queryset, cursor, not descending))

        if params.before is not None and params.after is None:
            # Walk backwards from the cursor, then restore the chosen order.
            rows = list(page_query.order_by(*backwards)[: params.limit + 1])
            self.has_more = len(rows) > params.limit
            self.page = rows[: params.limit][::-1]
        else:
            rows = list(page_query.order_by(*ordering)[: params.limit + 1])
            self.has_more = len(rows) > params.limit
            self.page = rows[: params.limit]
        if not rows:
            # A cursor missing from the list also gives no rows: tell the two apart.
            for name, cursor_id in cursors.items():
                if not queryset.filter(pk=cursor_id).exists():
                    raise ValidationError({name: [_NO_SUCH_ITEM]})
        return self.page

    def get_paginated_response(self, data: list) -> Response:
        response = Response(
            {
                "success": True,
                "data": data,
                "pagination": {
                    "has_more": self.has_more,
                    "first_id": str(self.page[0].pk) if self.page else None,
                    "last_id": str(self.page[-1].pk) if self.page else None,
                },
            }
        )
        response.enveloped = True
        return response

    @staticmethod
    def _params(request: Request, default_order: str) -> PageParams:
        query = request.query_params
        errors: dict[str, list[str]] = {}

        limit = DEFAULT_LIMIT
        raw_limit = query.get("limit")
        if raw_limit is not None:
            # Length first: int() of thousands of digits raises, and costs.
            valid = raw_limit.isascii() and raw_limit.isdigit() and len(raw_limit) <= 3
            if valid and 1 <= int(raw_limit) <= MAX_LIMIT:
                limit = int(raw_limit)
            else:
                errors["limit"] = [f"Must be an integer from 1 to {MAX_LIMIT}."]

        order = query.get("order", default_order)
        if order not in ("asc", "desc"):
            errors["order"] = ['Must be "asc" or "desc".']

        if errors:
            raise ValidationError(errors)
        return PageParams(
            limit=limit,
            descending=order == "desc",
            after=query.get("after"),
            before=query.get("before"),
        )

    @staticmethod
    def _cursor(queryset: QuerySet, raw: str, name: str) -> uuid.UUID:
        try:
            return uuid.UUID(raw)
        except ValueError:
            raise ValidationError({name: [_NO_SUCH_ITEM]}) from None

    def get_schema_operation_parameters(self, view) -> list[dict[str, Any]]:
        default_order = getattr(view, "default_order", "desc")
        return [
            {
                "name": "limit",
                "in": "query",
                "required": False,
                "description": f"Page size, 1 to {MAX_LIMIT}.",
                "schema": {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": MAX_LIMIT,
                    "default": DEFAULT_LIMIT,
                },
            },
            {
                "name": "order",
                "in": "query",
                "required": False,
                "schema": {"type": "string", "enum": ["asc", "desc"], "default": default_order},
            },
            {
                "name": "after",
                "in": "query",
                "required": False,
                "description": "Id of an item in the list: return the items after it.",
                "schema": {"type": "string", "format": "uuid"},
            },
            {
                "name": "before",
                "in": "query",
                "required": False,
                "description": "Id of an item in the list: return the items before it.",
                "schema": {"type": "string", "format": "uuid"},
            },
        ]

    def get_paginated_response_schema(self, schema: dict[str, Any]) -> dict[str, Any]:
        return {
            "type": "object",
            "required": ["success", "data", "pagination"],
            "properties": {
                "success": {"type": "boolean", "enum": [True]},
                "data": schema,
                "pagination": {
                    "type": "object",
                    "required": ["has_more", "first_id", "last_id"],
                    "properties": {
                        "has_more": {"type": "boolean"},
                        "first_id": {"type": "string", "format": "uuid", "nullable": True},
                        "last_id": {"type": "string", "format": "uuid", "nullable": True},
                    },
                },
            },
        }
