"""``Idempotency-Key`` on POST: a retried request gets the first answer again.

Keys are scoped to the user. The first request claims the key by inserting
its record (the unique constraint decides races); a repeat with the same
method, path and body within 24 hours gets the stored answer with
``Idempotent-Replayed: true`` and does nothing else; the same key with
another request is 422; a repeat while the first is still being processed
is 409. Only successful answers are kept: after an error the key is free.
"""

import hashlib
import re
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.http import HttpResponse
from django.http.response import HttpResponseBase
from django.utils import timezone
from rest_framework import exceptions
from rest_framework.request import Request

from conversations.models import Run

from . import stream_slots
from .exceptions import IdempotencyKeyInUse, IdempotencyKeyReused
from .models import IdempotencyRecord
from .streaming import DONE, event_stream_response, follow_run_stream

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
KEY_TTL = timedelta(hours=24)
_VALID_KEY = re.compile(r"[\x20-\x7e]{1,255}")


class _Replay(Exception):
    def __init__(self, response: HttpResponseBase):
        self.response = response


def _fingerprint(request: Request) -> str:
    digest = hashlib.sha256()
    for part in (request.method.encode(), request.get_full_path().encode(), request.body):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


def _claim(user, key: str, fingerprint: str) -> IdempotencyRecord | None:
    """Own the key (None), or get the finished record to replay; raise otherwise."""
    now = timezone.now()
    # A first request that died without an answer frees its key after this.
    abandoned_before = now - timedelta(seconds=settings.RUN_TIMEOUT_SECONDS)
    for _ in range(3):
        try:
            with transaction.atomic(durable=True):
                IdempotencyRecord.objects.create(
                    user=user, key=key, fingerprint=fingerprint, expires_at=now + KEY_TTL
                )
            return None
        except IntegrityError:
            pass
        record = IdempotencyRecord.objects.filter(user=user, key=key).first()
        if record is None:
            continue
        if record.expires_at <= now or (
            record.response_status is None and record.created_at < abandoned_before
        ):
            IdempotencyRecord.objects.filter(pk=record.pk, created_at=record.created_at).delete()
            continue
        if record.fingerprint != fingerprint:
            raise IdempotencyKeyReused()
        if record.response_status is None:
            raise IdempotencyKeyInUse()
        return record
    raise IdempotencyKeyInUse()


def _replay(record: IdempotencyRecord) -> HttpResponseBase:
    if record.stream_run_id is not None:
        run = (
            Run.objects.select_related("thread", "input_message", "output_message")
            .filter(pk=record.stream_run_id)
            .first()
        )
        # A run deleted since, with its session or thread, left nothing to replay.
        body = follow_run_stream(run=run, after=0) if run is not None else iter([DONE])
        # A replayed stream holds a request thread like any other.
        slot = stream_slots.acquire(user_id=record.user_id)
        response = event_stream_response(slot.holding(body))
    else:
        response = HttpResponse(
            bytes(record.response_body or b""),
            status=record.response_status,
            content_type="application/json",
        )
    response[REPLAYED_HEADER] = "true"
    return response


class IdempotentPostMixin:
    """For viewsets: honour ``Idempotency-Key`` on authenticated POSTs."""

    _idempotency_record: tuple | None = None
    _stream_run_id: Any = None

    def replays_stream_of(self, run_id: Any) -> None:
        """Say that this request's answer is the stream of run ``run_id``.

        A streamed answer cannot be stored: a replay follows the run's
        stored events instead.
        """
        self._stream_run_id = run_id

    def initial(self, request: Request, *args, **kwargs) -> None:
        # Authentication, permissions and throttles first: keys are per user.
        super().initial(request, *args, **kwargs)
        key = request.headers.get(HEADER)
        if request.method != "POST" or key is None:
            return
        if not _VALID_KEY.fullmatch(key):
            raise exceptions.ValidationError(
                {HEADER: ["Must be 1 to 255 printable ASCII characters."]}
            )
        record = _claim(request.user, key, _fingerprint(request))
        if record is not None:
            raise _Replay(_replay(record))
        self._idempotency_record = (request.user, key)

    def handle_exception(self, exc: Exception) -> HttpResponseBase:
        if isinstance(exc, _Replay):
            return exc.response
        return super().handle_exception(exc)

    def finalize_response(self, request: Request, response, *args, **kwargs):
        response = super().finalize_response(request, response, *args, **kwargs)
        if self._idempotency_record is None:
            return response
        user, key = self._idempotency_record
        stream_run_id, self._stream_run_id = self._stream_run_id, None
        self._idempotency_record = None
        record = IdempotencyRecord.objects.filter(user=user, key=key, response_status=None)
        if not 200 <= response.status_code < 300:
            # Errors are not final answers: the client may fix and retry.
            record.delete()
        elif stream_run_id is not None:
            record.update(response_status=response.status_code, stream_run_id=stream_run_id)
        else:
            response.render()
            record.update(response_status=response.status_code, response_body=response.content)
        return response


def purge_expired_keys() -> int:
    """Delete records past their 24 hours; returns how many."""
    deleted, _ = IdempotencyRecord.objects.filter(expires_at__lte=timezone.now()).delete()
    return deleted
