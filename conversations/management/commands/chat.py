"""Chat from the terminal, through the same launch service as the API."""

import uuid

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from ... import services
from ...errors import DomainError
from ...models import Conversation, EventName, RunStatus, Thread
from ...providers import get_provider
from ...runs import Mode, run_launch

QUIT_WORDS = {"/quit", "/exit"}


def _uuid(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise CommandError(f"{value!r} is not a valid id.") from None


class Command(BaseCommand):
    help = (
        "Interactive chat for a user: creates (or resumes) a session and a thread, "
        "then streams each reply as it arrives. Type /quit or press Ctrl-D to leave."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--user", required=True, help="Username to chat as.")
        parser.add_argument("--session", help="Id of one of the user's sessions to resume.")
        parser.add_argument("--thread", help="Id of a thread in that session to resume.")

    def handle(self, *args, **options) -> None:
        user = get_user_model().objects.filter(username=options["user"]).first()
        if user is None:
            raise CommandError(f"No user named {options['user']!r}.")
        session = self._session(user, options["session"])
        thread = self._thread(session, options["thread"])
        thread.conversation = session
        provider = get_provider()
        self.stdout.write(
            f"Session {session.id} ({session.title})\nThread {thread.id}\n"
            f"Provider {provider.name} / {provider.model}. /quit to leave.\n"
        )
        while True:
            try:
                text = input("you> ")
            except (EOFError, KeyboardInterrupt):
                self.stdout.write("")
                return
            if text.strip() in QUIT_WORDS:
                return
            if not text.strip():
                continue
            self._turn(thread, provider, text)

    def _turn(self, thread: Thread, provider, text: str) -> None:
        try:
            launch = run_launch(thread=thread, input=text, mode=Mode.STREAM, provider=provider)
        except DomainError as exc:
            self.stderr.write(f"{exc.code}: {exc.message}")
            return
        self.stdout.write("assistant> ", ending="")
        final = None
        for event in launch.events:
            if event.event == EventName.MESSAGE_DELTA:
                self.stdout.write(event.data["delta"], ending="")
                self.stdout.flush()
            elif event.is_terminal:
                final = event.data
        self.stdout.write("")
        if final is not None and final["status"] != RunStatus.COMPLETED:
            error = final["error"] or {}
            self.stderr.write(
                f"[run {final['status']}: {error.get('code')} {error.get('message')}]"
            )

    def _session(self, user, session_id: str | None) -> Conversation:
        if session_id is None:
            return services.conversation_create(user=user)
        session = Conversation.objects.owned_by(user).filter(pk=_uuid(session_id)).first()
        if session is None:
            raise CommandError(f"User {user.username} has no session {session_id}.")
        return session

    def _thread(self, session: Conversation, thread_id: str | None) -> Thread:
        if thread_id is None:
            return services.thread_create(conversation=session)
        thread = Thread.objects.filter(conversation=session, pk=_uuid(thread_id)).first()
        if thread is None:
            raise CommandError(f"Session {session.id} has no thread {thread_id}.")
        return thread
