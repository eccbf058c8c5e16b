"""End runs that stopped making progress (a crashed worker or web process)."""

from django.conf import settings
from django.core.management.base import BaseCommand

from conversations.runs import runs_expire_stale


class Command(BaseCommand):
    help = (
        "Expire queued or in-progress runs whose heartbeat is older than "
        "RUN_TIMEOUT_SECONDS, freeing their threads. Safe to run at any time "
        "and from several hosts; run it from cron every minute."
    )

    def handle(self, *args, **options) -> None:
        expired = runs_expire_stale()
        self.stdout.write(
            f"Expired {expired} run(s) idle for more than {settings.RUN_TIMEOUT_SECONDS}s."
        )
