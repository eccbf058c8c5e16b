"""Liveness and readiness probes for load balancers and orchestrators."""

import logging

from django.db import DatabaseError, connection
from django.db.migrations.executor import MigrationExecutor
from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_safe

from conversations.errors import ErrorCode

from .exceptions import error_response

logger = logging.getLogger(__name__)


@require_safe
def healthz(request: HttpRequest) -> JsonResponse:
    """200 while the process is up; touches nothing else."""
    return JsonResponse({"success": True, "data": {"status": "ok"}})


@require_safe
def readyz(request: HttpRequest) -> JsonResponse:
    """200 when the database answers and no migration is pending, else 503."""
    try:
        connection.ensure_connection()
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        executor = MigrationExecutor(connection)
        pending = executor.migration_plan(executor.loader.graph.leaf_nodes())
    except DatabaseError:
        logger.warning("Readiness check: database unavailable", exc_info=True)
        return error_response(ErrorCode.SERVICE_UNAVAILABLE, "The database is unavailable.")
    if pending:
        return error_response(
            ErrorCode.SERVICE_UNAVAILABLE,
            "Database migrations are pending.",
            details={"pending_migrations": len(pending)},
        )
    return JsonResponse({"success": True, "data": {"status": "ready"}})
