"""Delete sessions nobody has touched for a while, with everything in them."""

import re
from datetime import timedelta

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django.utils import timezone

from conversations.models import Conversation

_AGE = re.compile(r"(\d+)([dhm])")
_UNITS = {"d": "days", "h": "hours", "m": "minutes"}
BATCH = 500


def parse_age(text: str) -> timedelta:
    match = _AGE.fullmatch(text)
    if match is None or int(match[1]) <= 0:
        raise CommandError(f"--older-than must look like 30d, 12h or 90m, got {text!r}.")
    return timedelta(**{_UNITS[match[2]]: int(match[1])})


class Command(BaseCommand):
    help = (
        "Delete sessions idle for longer than --older-than (e.g. 30d, 12h): not updated "
        "and no new message since. Their threads, messages and runs go with them, in "
        "batches. --dry-run only counts."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--older-than", required=True, help="Age such as 30d, 12h or 90m.")
        parser.add_argument("--dry-run", action="store_true", help="Count, delete nothing.")

    def handle(self, *args, **options) -> None:
        cutoff = timezone.now() - parse_age(options["older_than"])
        # Idle: not updated, and no message in any of its threads, since the cutoff.
        stale = Conversation.objects.filter(updated_at__lt=cutoff).exclude(
            threads__messages__created_at__gte=cutoff
        )
        if options["dry_run"]:
            self.stdout.write(f"Would delete {stale.count()} session(s) updated before {cutoff}.")
            return
        deleted = 0
        while True:
            batch = list(stale.values_list("id", flat=True)[:BATCH])
            if not batch:
                break
            with transaction.atomic(durable=True):
                deleted += (
                    Conversation.objects.filter(id__in=batch)
                    .delete()[1]
                    .get(Conversation._meta.label, 0)
                )
        self.stdout.write(f"Deleted {deleted} session(s) updated before {cutoff}.")
