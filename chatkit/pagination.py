"""Keyset paging: ``limit``, ``order``, ``after`` and ``before``.

Pages are cut on ``(created_at, id)``, so a page costs the same at any depth
and rows inserted meanwhile never shift a page. ``has_more`` tells whether
more items lie beyond the page in the direction of travel: past ``last_id``
normally, before ``first_id`` when paging with ``before`` alone.
"""

import uuid
from dataclasses import dataclass
from typing import Any

from django.db.models import QuerySet
from rest_framework.exceptions import ValidationError
from rest_framework.pagination import BasePagination
from rest_framework.request import Request
from rest_framework.response import Response

from conversations.runs.store import rows_beyond

DEFAULT_LIMIT = 20
MAX_LIMIT = 100
NO_SUCH_ITEM = "No item with this id in the list."


@dataclass(frozen=True)
class PageParams:
    limit: int
    descending: bool
    after: Any = None
    before: Any = None


class CursorNotInList(Exception):
    """A cursor (``after`` or ``before``) that is not an item of the list."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def keyset_page(
    queryset: QuerySet, params: PageParams, parent: tuple[str, Any]
) -> tuple[list, bool]:
    """One page of ``queryset`` as ``params`` ask: (items, has_more).

    ``parent`` is the field and value that make the list (``("thread",
    thread.pk)``), which a cursor must share. A cursor that is not an item
    of the list raises ``CursorNotInList``.
    """
    descending = params.descending
    ordering = ("-created_at", "-id") if descending else ("created_at", "id")
    backwards = ("created_at", "id") if descending else ("-created_at", "-id")

    page_query = queryset
    cursors = {}
    if params.after is not None:
        cursors["after"] = cursor = _cursor(params.after, "after")
        page_query = page_query.filter(rows_beyond(queryset.model, cursor, descending, parent))
    if params.before is not None:
        cursors["before"] = cursor = _cursor(params.before, "before")
        page_query = page_query.filter(rows_beyond(queryset.model, cursor, not descending, parent))

    if params.before is not None and params.after is None:
        # Walk backwards from the cursor, then restore the chosen order.
        rows = list(page_query.order_by(*backwards)[: params.limit + 1])
        page = rows[: params.limit][::-1]
    else:
        rows = list(page_query.order_by(*ordering)[: params.limit + 1])
        page = rows[: params.limit]
    if not rows:
        # A cursor missing from the list also gives no rows: tell the two apart.
        for name, cursor_id in cursors.items():
            if not queryset.filter(pk=cursor_id).exists():
                raise CursorNotInList(name)
    return page, len(rows) > params.limit


def _cursor(raw: Any, name: str) -> uuid.UUID:
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise CursorNotInList(name) from None


class KeysetPagination(BasePagination):
    """The contract's list paging.

    Views set ``default_order`` ("asc" or "desc") and have ``list_parent()``:
    the field and value that make the list (``("thread", thread.pk)``), which
    a cursor must share.
    """

    def paginate_queryset(self, queryset: QuerySet, request: Request, view=None) -> list:
        params = self._params(request, getattr(view, "default_order", "desc"))
        cursor = params.after is not None or params.before is not None
        parent = view.list_parent() if cursor else None
        try:
            self.page, self.has_more = keyset_page(queryset, params, parent)
        except CursorNotInList as missing:
            raise ValidationError({missing.name: [NO_SUCH_ITEM]}) from None
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
