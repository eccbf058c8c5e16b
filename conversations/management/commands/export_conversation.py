"""Export one session with its threads and messages, as JSON or Markdown."""

import json
import uuid
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from conversations.documents import iso, message_document
from conversations.models import Conversation, Message


def _export(conversation: Conversation) -> dict:
    threads = []
    for thread in conversation.threads.order_by("created_at", "id"):
        messages = Message.objects.filter(thread=thread).order_by("created_at", "id")
        threads.append(
            {
                "id": str(thread.id),
                "title": thread.title,
                "metadata": thread.metadata,
                "created_at": iso(thread.created_at),
                "messages": [message_document(message) for message in messages.iterator()],
            }
        )
    return {
        "id": str(conversation.id),
        "user_id": str(conversation.user_id),
        "username": conversation.user.username,
        "title": conversation.title,
        "instructions": conversation.instructions,
        "metadata": conversation.metadata,
        "created_at": iso(conversation.created_at),
        "updated_at": iso(conversation.updated_at),
        "threads": threads,
    }


def _markdown(export: dict) -> str:
    lines = [f"# {export['title']}", ""]
    lines.append(
        f"Session `{export['id']}` of {export['username']}, created {export['created_at']}."
    )
    if export["instructions"]:
        lines += ["", "## Instructions", "", export["instructions"]]
    for thread in export["threads"]:
        lines += ["", f"## {thread['title']}", "", f"Thread `{thread['id']}`."]
        for message in thread["messages"]:
            note = "" if message["status"] == "completed" else f" ({message['status']})"
            lines += ["", f"**{message['role']}**{note}, {message['created_at']}:", ""]
            lines.append(message["content"])
    return "\n".join(lines) + "\n"


class Command(BaseCommand):
    help = (
        "Export a session (conversation) with its threads and messages, as JSON "
        "(default) or Markdown, to stdout or to --output FILE."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("session_id", help="Id of the session.")
        parser.add_argument("--format", choices=("json", "markdown"), default="json")
        parser.add_argument("--output", help="Write to this file instead of stdout.")

    def handle(self, *args, **options) -> None:
        try:
            session_id = uuid.UUID(options["session_id"])
        except ValueError:
            raise CommandError(f"{options['session_id']!r} is not a valid id.") from None
        conversation = Conversation.objects.select_related("user").filter(pk=session_id).first()
        if conversation is None:
            raise CommandError(f"No session {session_id}.")
        export = _export(conversation)
        if options["format"] == "json":
            text = json.dumps(export, indent=2, ensure_ascii=False) + "\n"
        else:
            text = _markdown(export)
        if options["output"]:
            Path(options["output"]).write_text(text, encoding="utf-8")
            self.stderr.write(f"Wrote {options['output']}.")
        else:
            self.stdout.write(text, ending="")
