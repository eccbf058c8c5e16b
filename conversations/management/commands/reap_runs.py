"""End runs nobody carries on: their carrier died (a crashed process), or none came."""

from django.conf import settings
from django.core.management.base import BaseCommand

from conversations.runs import runs_expire_stale


class Command(BaseCommand):
    help = (
        "Expire in-progress runs whose carrier stopped beating for "
        "RUN_HEARTBEAT_WINDOW_SECONDS, and queued runs that waited for a worker "
        "longer than RUN_TIMEOUT_SECONDS, freeing their threads. Safe to run at any "
        "time and from several hosts; run it from cron every minute."
    )

    def handle(self, *args, **options) -> None:
        expired = runs_expire_stale()
        self.stdout.write(
            f"Expired {expired} run(s): in progress without a heartbeat for "
            f"{settings.RUN_HEARTBEAT_WINDOW_SECONDS:g}s, or queued for "
            f"{settings.RUN_TIMEOUT_SECONDS}s."
        )
