"""The operator commands: create_api_user, export_conversation, purge_conversations,
reap_runs, purge_idempotency_keys, chat and worker (its refusal only)."""

import builtins
import json
import uuid
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command, load_command_class
from django.core.management.base import CommandError
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.models import User
from chatkit.models import IdempotencyRecord
from conversations import runs, services
from conversations.llm import Delta, ProviderError
from conversations.management.commands import chat as chat_command
from conversations.management.commands import purge_conversations
from conversations.models import Conversation, Message, Run, RunEvent, Thread
from conversations.providers.echo import EchoProvider
from tests.db import count_rows, fetch_row, fetch_rows

SESSIONS = "/api/v1/chatkit/sessions"


def run_command(name: str, *args, **options) -> str:
    out = StringIO()
    call_command(name, *args, stdout=out, stderr=StringIO(), **options)
    return out.getvalue()


def help_text(app: str, name: str) -> str:
    return load_command_class(app, name).create_parser("manage.py", name).format_help()


def runs_url(thread: Thread) -> str:
    return f"{SESSIONS}/{thread.conversation_id}/threads/{thread.pk}/runs"


def chat_turn(api: APIClient, thread: Thread, text: str) -> dict:
    response = api.post(runs_url(thread), {"input": text}, format="json")
    assert response.status_code == 201, response.json()
    return response.json()["data"]


# create_api_user ------------------------------------------------------------


def test_create_api_user_prints_an_id_and_a_working_token_pair(db):
    printed = json.loads(run_command("create_api_user", "script-bot", email="bot@example.com"))

    user = User.objects.get(username="script-bot")
    assert printed["user_id"] == str(user.pk)
    assert user.email == "bot@example.com"
    assert printed["access"]
    assert printed["refresh"]

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {printed['access']}")
    me = client.get("/api/v1/auth/me")
    assert me.status_code == 200, me.json()
    assert me.json()["data"]["id"] == printed["user_id"]
    assert me.json()["data"]["username"] == "script-bot"

    refreshed = APIClient().post(
        "/api/v1/auth/token/refresh", {"refresh": printed["refresh"]}, format="json"
    )
    assert refreshed.status_code == 200, refreshed.json()


def test_create_api_user_twice_fails_unless_existing(db):
    first = json.loads(run_command("create_api_user", "script-bot"))

    with pytest.raises(CommandError, match="exists"):
        run_command("create_api_user", "script-bot")

    again = json.loads(run_command("create_api_user", "script-bot", existing=True))
    assert again["user_id"] == first["user_id"]
    assert again["refresh"] != first["refresh"]
    assert User.objects.filter(username="script-bot").count() == 1


def test_create_api_user_existing_for_a_missing_user_fails(db):
    with pytest.raises(CommandError, match="nobody"):
        run_command("create_api_user", "nobody", existing=True)

    assert not User.objects.filter(username="nobody").exists()


def test_create_api_user_with_a_password_can_log_in_with_it(db):
    password = "a long operator passphrase"
    run_command("create_api_user", "script-bot", password=password)

    response = APIClient().post(
        "/api/v1/auth/token", {"username": "script-bot", "password": password}, format="json"
    )
    assert response.status_code == 200, response.json()
    assert set(response.json()["data"]) >= {"access", "refresh"}

    wrong = APIClient().post(
        "/api/v1/auth/token", {"username": "script-bot", "password": "not it"}, format="json"
    )
    assert wrong.status_code == 401


def test_create_api_user_without_a_password_gets_an_unusable_guess(db):
    run_command("create_api_user", "script-bot")

    user = User.objects.get(username="script-bot")
    assert user.has_usable_password()
    assert not user.check_password("")
    assert not user.check_password("script-bot")


def test_create_api_user_existing_for_an_inactive_user_fails(owner):
    User.objects.filter(pk=owner.pk).update(is_active=False)

    with pytest.raises(CommandError, match="not active"):
        run_command("create_api_user", "owner", existing=True)


@pytest.mark.parametrize(
    "username", ["", "has space", "semi;colon", "x" * 151], ids=["empty", "space", "semi", "long"]
)
def test_create_api_user_refuses_a_username_the_account_model_refuses(db, username):
    # The same rules as registration and the admin (letters, digits, @.+-_, at
    # most 150): otherwise the account can never be edited in the admin, and a
    # long name is a database error on PostgreSQL only.
    with pytest.raises(CommandError):
        run_command("create_api_user", username)

    assert not User.objects.exists()


@pytest.mark.parametrize("password", ["short", "12345678901", "password123"])
def test_create_api_user_refuses_a_password_registration_would_refuse(db, password):
    with pytest.raises(CommandError, match="Weak password"):
        call_command("create_api_user", "scripted", password=password, stdout=StringIO())

    assert not User.objects.filter(username="scripted").exists()


def test_create_api_user_help():
    text = help_text("accounts", "create_api_user")

    assert "API user" in text
    for option in ("username", "--email", "--password", "--existing"):
        assert option in text


# export_conversation --------------------------------------------------------


@pytest.fixture
def conversation(owner, api) -> Conversation:
    """A session with two threads: two turns in the first, one in the second."""
    session = services.conversation_create(
        user=owner, title="Trip planning", instructions="Answer briefly."
    )
    first = services.thread_create(conversation=session, title="Trains")
    second = services.thread_create(conversation=session, title="Hotels")
    chat_turn(api, first, "Which train to Lyon?")
    chat_turn(api, first, "And back on Sunday?")
    chat_turn(api, second, "Somewhere quiet, ünïcode ok")
    return session


EXPECTED_THREADS = [
    (
        "Trains",
        [
            ("user", "Which train to Lyon?"),
            ("assistant", "Echo: Which train to Lyon?"),
            ("user", "And back on Sunday?"),
            ("assistant", "Echo: And back on Sunday?"),
        ],
    ),
    (
        "Hotels",
        [
            ("user", "Somewhere quiet, ünïcode ok"),
            ("assistant", "Echo: Somewhere quiet, ünïcode ok"),
        ],
    ),
]


def test_export_json_has_the_session_threads_and_messages_in_order(conversation, owner):
    export = json.loads(run_command("export_conversation", str(conversation.pk)))

    assert export["id"] == str(conversation.pk)
    assert export["user_id"] == str(owner.pk)
    assert export["username"] == "owner"
    assert export["title"] == "Trip planning"
    assert export["instructions"] == "Answer briefly."
    got = [
        (thread["title"], [(m["role"], m["content"]) for m in thread["messages"]])
        for thread in export["threads"]
    ]
    assert got == EXPECTED_THREADS
    stored = {str(t.pk) for t in Thread.objects.filter(conversation=conversation)}
    assert {thread["id"] for thread in export["threads"]} == stored
    for thread in export["threads"]:
        ids = [m["id"] for m in thread["messages"]]
        assert ids == [
            str(pk)
            for pk in Message.objects.filter(thread_id=thread["id"])
            .order_by("created_at", "id")
            .values_list("id", flat=True)
        ]
        assert all(m["thread_id"] == thread["id"] for m in thread["messages"])


def test_export_markdown_has_the_title_roles_and_contents(conversation):
    text = run_command("export_conversation", str(conversation.pk), format="markdown")

    assert text.startswith("# Trip planning\n")
    assert "Answer briefly." in text
    assert "## Trains" in text
    assert "## Hotels" in text
    assert text.count("**user**") == 3
    assert text.count("**assistant**") == 3
    positions = [text.index(content) for _, messages in EXPECTED_THREADS for _, content in messages]
    assert positions == sorted(positions)  # in order, and every one present
    assert text.index("## Trains") < positions[0] < text.index("## Hotels") < positions[4]


def test_export_markdown_marks_an_incomplete_reply(conversation):
    last = Message.objects.filter(thread__conversation=conversation, role="assistant").latest(
        "created_at"
    )
    Message.objects.filter(pk=last.pk).update(status="incomplete")

    text = run_command("export_conversation", str(conversation.pk), format="markdown")

    assert text.count("**assistant** (incomplete)") == 1
    assert text.count("**assistant**,") == 2


def test_export_to_a_file(conversation, tmp_path):
    target = tmp_path / "export.json"
    out = run_command("export_conversation", str(conversation.pk), output=str(target))

    assert out == ""
    written = json.loads(target.read_text(encoding="utf-8"))
    assert written == json.loads(run_command("export_conversation", str(conversation.pk)))

    markdown = tmp_path / "export.md"
    run_command("export_conversation", str(conversation.pk), format="markdown", output=markdown)
    assert markdown.read_text(encoding="utf-8").startswith("# Trip planning\n")


@pytest.mark.parametrize("session_id", ["not-a-uuid", "", "1234", str(uuid.uuid4())])
def test_export_of_a_malformed_or_unknown_id_is_a_command_error(db, session_id):
    with pytest.raises(CommandError):
        run_command("export_conversation", session_id)


def test_export_of_another_users_session_works(conversation, stranger):
    theirs = services.conversation_create(user=stranger, title="Theirs")
    services.thread_create(conversation=theirs, title="Only thread")

    export = json.loads(run_command("export_conversation", str(theirs.pk)))

    assert export["username"] == "stranger"
    assert export["user_id"] == str(stranger.pk)
    assert [t["title"] for t in export["threads"]] == ["Only thread"]
    assert export["threads"][0]["messages"] == []


# purge_conversations --------------------------------------------------------


def session_with_a_turn(user, text: str) -> tuple[Conversation, Thread]:
    session = services.conversation_create(user=user, title=text)
    thread = services.thread_create(conversation=session)
    run = runs.run_start(thread=thread, input=text, provider="echo", model="echo-1")
    list(runs.run_execute(run=run, provider=EchoProvider(), stream=False))
    return session, thread


def age(session: Conversation, *, updated: timedelta, messages: timedelta) -> None:
    now = timezone.now()
    Conversation.objects.filter(pk=session.pk).update(updated_at=now - updated)
    Message.objects.filter(thread__conversation=session).update(created_at=now - messages)


def rows_of(thread: Thread) -> dict[str, int]:
    """Committed rows under one thread, counted through a second connection."""
    run_ids = [row["id"] for row in fetch_rows(Run, thread=thread.pk)]
    return {
        "session": count_rows(Conversation, pk=thread.conversation_id),
        "thread": count_rows(Thread, pk=thread.pk),
        "messages": count_rows(Message, thread=thread.pk),
        "runs": len(run_ids),
        "events": sum(count_rows(RunEvent, run=run_id) for run_id in run_ids),
    }


@pytest.mark.django_db(transaction=True)
def test_purge_deletes_idle_sessions_with_everything_in_them(owner):
    idle, idle_thread = session_with_a_turn(owner, "idle")
    age(idle, updated=timedelta(days=40), messages=timedelta(days=40))
    # An idle session whose thread never got a message.
    empty = services.conversation_create(user=owner, title="empty")
    empty_thread = services.thread_create(conversation=empty)
    age(empty, updated=timedelta(days=40), messages=timedelta(days=40))
    # Not updated for long, but a message came in yesterday.
    talked, talked_thread = session_with_a_turn(owner, "talked")
    age(talked, updated=timedelta(days=40), messages=timedelta(days=1))
    # Old messages, but renamed yesterday.
    renamed, renamed_thread = session_with_a_turn(owner, "renamed")
    age(renamed, updated=timedelta(days=1), messages=timedelta(days=40))

    before = {name: rows_of(t) for name, t in [("idle", idle_thread), ("talked", talked_thread)]}
    assert before["idle"] == {"session": 1, "thread": 1, "messages": 2, "runs": 1, "events": 6}

    dry = run_command("purge_conversations", older_than="30d", dry_run=True)

    assert "Would delete 2 session(s)" in dry
    assert rows_of(idle_thread) == before["idle"]
    assert count_rows(Conversation) == 4

    out = run_command("purge_conversations", older_than="30d")

    assert "Deleted 2 session(s)" in out
    assert rows_of(idle_thread) == dict.fromkeys(before["idle"], 0)
    assert fetch_row(Conversation, empty.pk) is None
    assert fetch_row(Thread, empty_thread.pk) is None
    assert rows_of(talked_thread) == before["talked"]
    assert rows_of(renamed_thread) == before["talked"]
    assert count_rows(Conversation) == 2


def test_purge_keeps_sessions_younger_than_the_age(owner):
    session, _ = session_with_a_turn(owner, "recent")
    age(session, updated=timedelta(hours=11), messages=timedelta(hours=11))

    assert "Deleted 0 session(s)" in run_command("purge_conversations", older_than="12h")
    assert Conversation.objects.filter(pk=session.pk).exists()

    assert "Deleted 1 session(s)" in run_command("purge_conversations", older_than="600m")
    assert not Conversation.objects.filter(pk=session.pk).exists()


def test_purge_deletes_more_than_one_batch(owner):
    count = purge_conversations.BATCH + 7
    Conversation.objects.bulk_create(Conversation(user=owner) for _ in range(count))
    Conversation.objects.update(updated_at=timezone.now() - timedelta(days=2))
    kept = Conversation.objects.create(user=owner)  # past the quota: not through the service

    out = run_command("purge_conversations", older_than="1d")

    assert f"Deleted {count} session(s)" in out
    assert list(Conversation.objects.values_list("pk", flat=True)) == [kept.pk]


@pytest.mark.parametrize("bad", ["0d", "30", "abc", "30y", "-5d", "d", "30 d", "1.5d", ""])
def test_purge_refuses_a_bad_age(owner, bad):
    session = services.conversation_create(user=owner)
    age(session, updated=timedelta(days=400), messages=timedelta(days=400))

    with pytest.raises(CommandError, match="older-than"):
        run_command("purge_conversations", older_than=bad)

    assert Conversation.objects.filter(pk=session.pk).exists()


# reap_runs and purge_idempotency_keys ---------------------------------------


def test_reap_runs_expires_a_stale_run_and_prints_the_count(owner, settings):
    thread = services.thread_create(conversation=services.conversation_create(user=owner))
    stale = runs.run_start(thread=thread, input="x", provider="echo", model="echo-1", queued=True)
    fresh_thread = services.thread_create(conversation=thread.conversation)
    fresh = runs.run_start(thread=fresh_thread, input="y", provider="echo", model="echo-1")
    past = timezone.now() - timedelta(seconds=settings.RUN_TIMEOUT_SECONDS + 5)
    Run.objects.filter(pk=stale.pk).update(heartbeat_at=past)

    out = run_command("reap_runs")

    assert out.startswith("Expired 1 run(s)")
    assert Run.objects.get(pk=stale.pk).status == "expired"
    assert Run.objects.get(pk=fresh.pk).status == "in_progress"
    assert run_command("reap_runs").startswith("Expired 0 run(s)")


def test_purge_idempotency_keys_deletes_only_expired_records(owner, stranger):
    now = timezone.now()
    expired = IdempotencyRecord.objects.create(
        user=owner, key="old", fingerprint="f", response_status=201, expires_at=now
    )
    IdempotencyRecord.objects.create(
        user=stranger, key="old", fingerprint="f", expires_at=now - timedelta(days=3)
    )
    kept = [
        IdempotencyRecord.objects.create(
            user=owner, key="new", fingerprint="f", expires_at=now + timedelta(minutes=1)
        ),
        IdempotencyRecord.objects.create(
            user=stranger, key="new", fingerprint="f", expires_at=now + timedelta(hours=23)
        ),
    ]

    out = run_command("purge_idempotency_keys")

    assert "Deleted 2 expired idempotency record(s)" in out
    assert not IdempotencyRecord.objects.filter(pk=expired.pk).exists()
    assert sorted(IdempotencyRecord.objects.values_list("pk", flat=True)) == sorted(
        r.pk for r in kept
    )


# chat -----------------------------------------------------------------------


@pytest.fixture
def typed(monkeypatch):
    """Feed lines to ``input()``; records the prompts it was called with."""
    prompts: list[str] = []

    def feed(*lines: str) -> None:
        queue = iter(lines)

        def fake_input(prompt: str = "") -> str:
            prompts.append(prompt)
            try:
                return next(queue)
            except StopIteration:
                raise EOFError from None

        monkeypatch.setattr(builtins, "input", fake_input)

    feed.prompts = prompts
    return feed


def test_chat_streams_echo_replies_and_stores_the_messages(owner, typed):
    typed("Hello there", "   ", "How are you?", "/quit", "never read")

    out = run_command("chat", user="owner")

    assert "assistant> Echo: Hello there\n" in out
    assert "assistant> Echo: How are you?\n" in out
    assert typed.prompts == ["you> "] * 4
    session = Conversation.objects.get(user=owner)
    assert f"Session {session.pk}" in out
    messages = Message.objects.filter(thread__conversation=session).order_by("created_at", "id")
    assert [(m.role, m.content) for m in messages] == [
        ("user", "Hello there"),
        ("assistant", "Echo: Hello there"),
        ("user", "How are you?"),
        ("assistant", "Echo: How are you?"),
    ]
    statuses = Run.objects.filter(thread__conversation=session).values_list("status", flat=True)
    assert list(statuses) == ["completed", "completed"]


class FailingProvider:
    """Streams one piece, then fails."""

    name = "failing"
    model = "failing-1"

    def stream(self, messages):
        yield Delta("Partial ")
        raise ProviderError("upstream said no")

    def complete(self, messages):
        raise ProviderError("upstream said no")


def test_chat_reports_a_failed_run_and_goes_on(owner, typed, monkeypatch):
    monkeypatch.setattr(chat_command, "get_provider", FailingProvider)
    typed("first", "second", "/exit")
    out, err = StringIO(), StringIO()

    call_command("chat", user="owner", stdout=out, stderr=err)

    assert out.getvalue().count("assistant> Partial \n") == 2
    assert err.getvalue().count("[run failed: PROVIDER_ERROR") == 2
    assert "upstream said no" not in err.getvalue()  # the public message only
    assert list(Run.objects.values_list("status", flat=True)) == ["failed", "failed"]
    replies = Message.objects.filter(role="assistant").values_list("content", "status")
    assert list(replies) == [("Partial ", "incomplete"), ("Partial ", "incomplete")]


def test_chat_resumes_a_session_and_thread(owner, typed):
    session = services.conversation_create(user=owner, title="Kept")
    services.thread_create(conversation=session)
    thread = services.thread_create(conversation=session)
    typed("Again")  # then Ctrl-D

    out = run_command("chat", user="owner", session=str(session.pk), thread=str(thread.pk))

    assert f"Thread {thread.pk}" in out
    assert "assistant> Echo: Again" in out
    assert list(Message.objects.filter(thread=thread).values_list("content", flat=True)) == [
        "Again",
        "Echo: Again",
    ]
    assert Conversation.objects.filter(user=owner).count() == 1


def test_chat_on_a_thread_with_an_active_run_says_so(owner, typed):
    session = services.conversation_create(user=owner)
    thread = services.thread_create(conversation=session)
    active = runs.run_start(thread=thread, input="x", provider="echo", model="echo-1", queued=True)
    typed("hello")
    out, err = StringIO(), StringIO()

    call_command(
        "chat", user="owner", session=str(session.pk), thread=str(thread.pk), stdout=out, stderr=err
    )

    assert "RUN_IN_PROGRESS" in err.getvalue()
    assert list(Run.objects.values_list("pk", flat=True)) == [active.pk]


def test_chat_for_an_unknown_user_is_a_command_error(db, typed):
    typed("hello")

    with pytest.raises(CommandError, match="ghost"):
        run_command("chat", user="ghost")

    assert not Message.objects.exists()


@pytest.mark.parametrize("session_id", ["foreign", "malformed", "unknown"])
def test_chat_with_a_session_that_is_not_the_users_is_a_command_error(
    owner, stranger, typed, session_id
):
    theirs = services.conversation_create(user=stranger)
    value = {"foreign": str(theirs.pk), "malformed": "12-34", "unknown": str(uuid.uuid4())}
    typed("hello")

    with pytest.raises(CommandError):
        run_command("chat", user="owner", session=value[session_id])

    assert not Message.objects.exists()
    assert not Conversation.objects.filter(user=owner).exists()


@pytest.mark.parametrize("thread_of", ["other session", "malformed"])
def test_chat_with_a_thread_of_another_session_is_a_command_error(owner, typed, thread_of):
    mine = services.conversation_create(user=owner)
    other = services.conversation_create(user=owner)
    elsewhere = services.thread_create(conversation=other)
    value = {"other session": str(elsewhere.pk), "malformed": "not-an-id"}[thread_of]
    typed("hello")

    with pytest.raises(CommandError):
        run_command("chat", user="owner", session=str(mine.pk), thread=value)

    assert not Message.objects.exists()
    assert not Thread.objects.filter(conversation=mine).exists()


# worker ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "backend",
    ["django_tasks_rq.RQBackend", "django_tasks.backends.dummy.DummyBackend"],
)
def test_worker_refuses_another_engine(settings, backend):
    settings.TASKS = {"default": {"BACKEND": backend}}

    with pytest.raises(CommandError) as raised:
        run_command("worker")

    message = str(raised.value)
    assert backend in message
    assert "rqworker" in message
    assert "reap_runs" in message


def test_worker_help():
    text = help_text("conversations", "worker")

    assert "--threads" in text
    assert "worker" in text


def test_commands_have_help():
    for app, name in [
        ("conversations", "export_conversation"),
        ("conversations", "purge_conversations"),
        ("conversations", "reap_runs"),
        ("conversations", "chat"),
        ("chatkit", "purge_idempotency_keys"),
    ]:
        assert load_command_class(app, name).help, name
