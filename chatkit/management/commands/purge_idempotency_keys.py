"""Delete Idempotency-Key records older than their 24 hours."""

from django.core.management.base import BaseCommand

from ...idempotency import purge_expired_keys


class Command(BaseCommand):
    help = (
        "Delete stored Idempotency-Key answers past their 24 hours. The worker does "
        "this on its own; run it from cron when the worker is not this project's."
    )

    def handle(self, *args, **options) -> None:
        self.stdout.write(f"Deleted {purge_expired_keys()} expired idempotency record(s).")
