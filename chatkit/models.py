from django.conf import settings
from django.db import models


class IdempotencyRecord(models.Model):
    """The first answer to a POST sent with an ``Idempotency-Key``, kept 24 hours.

    ``response_status`` is null while the first request is still being
    processed; a run streamed as events keeps its run id instead of a body,
    and a replay streams that run's stored events.
    """

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    key = models.CharField(max_length=255)
    fingerprint = models.CharField(max_length=64, help_text="SHA-256 of method, path and body.")
    response_status = models.PositiveSmallIntegerField(null=True, blank=True)
    response_body = models.BinaryField(null=True, blank=True)
    stream_run_id = models.UUIDField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(db_index=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=("user", "key"), name="idempotency_user_key_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.key} ({self.response_status or 'in progress'})"
