"""POST .../runs and the runs and messages it leaves behind (echo provider by default)."""

import queue
import threading
from datetime import datetime

import pytest
from django.db import connections

from conversations import runs
from conversations.models import Conversation, Message, Run, Thread
from tests.conftest import client_for
from tests.db import fetch_rows
from tests.openai_server import TEST_MODEL, Reply

pytest_plugins = ["tests.conftest_openai"]

SESSIONS = "/api/v1/chatkit/sessions"
RUN_KEYS = {
    "id",
    "thread_id",
    "session_id",
    "status",
    "input_message",
    "output_message",
    "error",
    "incomplete_details",
    "usage",
    "provider",
    "model",
    "metadata",
    "created_at",
    "started_at",
    "completed_at",
}
# The contract's message document (superseded: set by a retry; feedback: the
# reader's, given over ChatKit).
MESSAGE_KEYS = {
    "id",
    "thread_id",
    "run_id",
    "role",
    "content",
    "status",
    "feedback",
    "superseded",
    "created_at",
    "metadata",
}


def thread_url(thread: Thread) -> str:
    return f"{SESSIONS}/{thread.conversation_id}/threads/{thread.pk}"


def runs_url(thread: Thread) -> str:
    return f"{thread_url(thread)}/runs"


def post_run(client, thread: Thread, body: dict):
    return client.post(runs_url(thread), body, format="json")


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


# The whole flow, committed.


@pytest.mark.django_db(transaction=True)
def test_three_runs_leave_six_committed_messages_in_order(api):
    session = api.post(SESSIONS, {}, format="json").json()["data"]
    thread = api.post(f"{SESSIONS}/{session['id']}/threads", {}, format="json").json()["data"]
    url = f"{SESSIONS}/{session['id']}/threads/{thread['id']}"
    inputs = ["First question", "Second question", "Third question"]

    run_ids = []
    for text in inputs:
        response = api.post(f"{url}/runs", {"input": text}, format="json")
        assert response.status_code == 201
        assert response.json()["data"]["status"] == "completed"
        run_ids.append(response.json()["data"]["id"])

    messages = api.get(f"{url}/messages").json()["data"]
    expected = []
    for text, run_id in zip(inputs, run_ids, strict=True):
        expected += [("user", text, run_id), ("assistant", f"Echo: {text}", run_id)]
    assert [(m["role"], m["content"], m["run_id"]) for m in messages] == expected
    assert all(m["status"] == "completed" for m in messages)

    # A second connection sees the same six rows: every run was committed.
    rows = fetch_rows(Message, thread=thread["id"])
    rows.sort(key=lambda row: (row["created_at"], row["id"]))
    assert [(r["role"], r["content"], str(r["run_id"])) for r in rows] == expected
    run_rows = fetch_rows(Run, thread=thread["id"])
    assert {str(r["id"]) for r in run_rows} == set(run_ids)
    assert {r["status"] for r in run_rows} == {"completed"}
    assert all(r["output_message_id"] is not None for r in run_rows)


def test_run_has_the_contract_shape(api, session, thread):
    response = post_run(api, thread, {"input": "Hello there", "metadata": {"source": "test"}})

    assert response.status_code == 201
    body = response.json()
    assert body["success"] is True
    run = body["data"]
    assert set(run) == RUN_KEYS
    assert run["thread_id"] == str(thread.pk)
    assert run["session_id"] == str(session.pk)
    assert run["status"] == "completed"
    assert run["provider"] == "echo"
    assert run["model"] == "echo-1"
    assert run["error"] is None
    assert run["incomplete_details"] is None
    assert run["metadata"] == {"source": "test"}
    usage = run["usage"]
    assert set(usage) == {"prompt_tokens", "completion_tokens", "total_tokens"}
    assert all(isinstance(value, int) for value in usage.values())
    assert usage["completion_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]

    user, reply = run["input_message"], run["output_message"]
    assert set(user) == MESSAGE_KEYS
    assert set(reply) == MESSAGE_KEYS
    assert (user["role"], user["content"], user["status"]) == ("user", "Hello there", "completed")
    assert reply["role"] == "assistant"
    assert reply["content"] == "Echo: Hello there"
    assert reply["status"] == "completed"
    for message in (user, reply):
        assert message["run_id"] == run["id"]
        assert message["thread_id"] == str(thread.pk)

    created, started, completed = (
        parse_time(run[key]) for key in ("created_at", "started_at", "completed_at")
    )
    assert created.utcoffset().total_seconds() == 0
    assert created <= started <= completed
    assert parse_time(user["created_at"]) <= parse_time(reply["created_at"])


def test_runs_list_newest_first_and_retrieve(api, thread):
    created = [post_run(api, thread, {"input": f"Turn {n}"}).json()["data"] for n in range(3)]

    listed = api.get(runs_url(thread))
    assert listed.status_code == 200
    assert [run["id"] for run in listed.json()["data"]] == [run["id"] for run in created[::-1]]
    assert listed.json()["pagination"]["has_more"] is False
    ascending = api.get(runs_url(thread), {"order": "asc"}).json()["data"]
    assert [run["id"] for run in ascending] == [run["id"] for run in created]

    retrieved = api.get(f"{runs_url(thread)}/{created[1]['id']}")
    assert retrieved.status_code == 200
    assert retrieved.json()["data"] == created[1]


def test_messages_filtered_by_run_id(api, thread):
    first = post_run(api, thread, {"input": "One"}).json()["data"]
    second = post_run(api, thread, {"input": "Two"}).json()["data"]

    response = api.get(f"{thread_url(thread)}/messages", {"run_id": second["id"]})

    assert response.status_code == 200
    messages = response.json()["data"]
    assert [(m["role"], m["content"]) for m in messages] == [
        ("user", "Two"),
        ("assistant", "Echo: Two"),
    ]
    assert {m["run_id"] for m in messages} == {second["id"]}
    assert first["id"] not in {m["run_id"] for m in messages}


# Auto-title.


def test_first_run_names_a_new_chat_session(api, session, thread):
    assert session.title == "New Chat"

    post_run(api, thread, {"input": "  Plan my\n trip   to Lisbon  "})

    session.refresh_from_db()
    assert session.title == "Plan my trip to Lisbon"


def test_long_first_message_gives_a_clean_short_title(api, session, thread):
    text = (
        "Could you please help me write a detailed itinerary for a two week "
        "journey through Portugal and Spain next spring"
    )

    post_run(api, thread, {"input": text})

    session.refresh_from_db()
    title = session.title
    assert title.endswith("…")
    prefix = title[:-1]
    assert 0 < len(prefix) <= 60
    assert text.startswith(prefix)
    # Cut between words, not inside one.
    assert text[len(prefix)] == " "
    assert prefix == prefix.strip()


def test_later_runs_do_not_rename_the_session(api, session, thread):
    post_run(api, thread, {"input": "First topic"})
    post_run(api, thread, {"input": "Something else entirely"})

    session.refresh_from_db()
    assert session.title == "First topic"


def test_session_with_a_custom_title_is_not_renamed(api, owner):
    session = Conversation.objects.create(user=owner, title="My own title")
    thread = Thread.objects.create(conversation=session)

    response = post_run(api, thread, {"input": "Hello"})

    assert response.status_code == 201
    session.refresh_from_db()
    assert session.title == "My own title"


# Instructions: the system message.


def test_session_instructions_are_the_system_message(api, owner, openai_settings):
    session = Conversation.objects.create(user=owner, instructions="Answer in haiku.")
    thread = Thread.objects.create(conversation=session)

    response = post_run(api, thread, {"input": "Tell me about rain"})

    assert response.status_code == 201
    [sent] = openai_settings.requests
    assert sent["model"] == TEST_MODEL
    assert sent["messages"] == [
        {"role": "system", "content": "Answer in haiku."},
        {"role": "user", "content": "Tell me about rain"},
    ]


def test_run_instructions_replace_the_session_instructions(api, owner, openai_settings):
    session = Conversation.objects.create(user=owner, instructions="Answer in haiku.")
    thread = Thread.objects.create(conversation=session)

    response = post_run(api, thread, {"input": "Hi", "instructions": "Answer in French."})

    assert response.status_code == 201
    [sent] = openai_settings.requests
    assert sent["messages"] == [
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": "Hi"},
    ]


def test_empty_run_instructions_keep_the_session_instructions(api, owner, openai_settings):
    session = Conversation.objects.create(user=owner, instructions="Answer in haiku.")
    thread = Thread.objects.create(conversation=session)

    post_run(api, thread, {"input": "Hi", "instructions": ""})

    [sent] = openai_settings.requests
    assert sent["messages"][0] == {"role": "system", "content": "Answer in haiku."}


def test_no_instructions_means_no_system_message(api, thread, openai_settings):
    post_run(api, thread, {"input": "Hi"})
    post_run(api, thread, {"input": "Again"})

    assert [m["role"] for m in openai_settings.requests[1]["messages"]] == [
        "user",
        "assistant",
        "user",
    ]


# Input validation.


@pytest.mark.parametrize(
    ("body", "field"),
    [
        pytest.param({}, "input", id="missing"),
        pytest.param({"input": ""}, "input", id="empty"),
        pytest.param({"input": " \n\t "}, "input", id="whitespace"),
        pytest.param({"input": "x" * 32001}, "input", id="too_long"),
        pytest.param({"input": 5}, "input", id="number"),
        pytest.param({"input": None}, "input", id="null"),
        pytest.param({"input": ["hi"]}, "input", id="list"),
        pytest.param({"input": "nul \u0000 byte"}, "input", id="nul_character"),
        pytest.param({"input": "hi", "stream": "yes"}, "stream", id="stream_string"),
        pytest.param({"input": "hi", "background": 1}, "background", id="background_number"),
        pytest.param({"input": "hi", "instructions": 7}, "instructions", id="instructions_number"),
        pytest.param({"input": "hi", "metadata": {"k": 1}}, "metadata", id="metadata_value"),
        pytest.param({"input": "hi", "colour": "blue"}, "colour", id="unknown_field"),
        pytest.param({"input": "hi", "status": "completed"}, "status", id="status"),
        pytest.param({"input": "hi", "thread_id": "x"}, "thread_id", id="thread_id"),
    ],
)
def test_invalid_run_body_is_400_and_stores_nothing(
    api, session, thread, openai_settings, body, field
):
    response = post_run(api, thread, body)

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "VALIDATION_ERROR"
    assert field in error["details"]
    assert not Message.objects.exists()
    assert not Run.objects.exists()
    assert openai_settings.requests == []
    session.refresh_from_db()
    assert session.title == "New Chat"


def test_input_of_exactly_the_maximum_length_is_accepted(api, thread):
    response = post_run(api, thread, {"input": "x" * 32000})

    assert response.status_code == 201
    assert response.json()["data"]["input_message"]["content"] == "x" * 32000


def test_run_body_that_is_not_json_is_400_malformed(api, thread):
    response = api.post(runs_url(thread), "{input", content_type="application/json")

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "MALFORMED_REQUEST"
    assert not Run.objects.exists()


# Ownership.


def test_run_in_foreign_thread_is_404_and_calls_no_provider(
    stranger_api, session, thread, openai_settings
):
    response = post_run(stranger_api, thread, {"input": "Let me in"})

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "NOT_FOUND"
    assert openai_settings.requests == []
    assert not Message.objects.exists()
    assert not Run.objects.exists()
    session.refresh_from_db()
    assert session.title == "New Chat"


def test_foreign_runs_and_messages_are_404(api, stranger_api, thread):
    run = post_run(api, thread, {"input": "Private"}).json()["data"]

    for url in (
        runs_url(thread),
        f"{runs_url(thread)}/{run['id']}",
        f"{thread_url(thread)}/messages",
    ):
        response = stranger_api.get(url)
        assert response.status_code == 404, url
        assert response.json()["error"]["code"] == "NOT_FOUND"


def test_missing_or_malformed_run_id_is_404(api, thread):
    post_run(api, thread, {"input": "Hi"})

    for run_id in ("not-a-uuid", "00000000-0000-0000-0000-000000000000"):
        response = api.get(f"{runs_url(thread)}/{run_id}")
        assert response.status_code == 404, run_id
        assert response.json()["error"]["code"] == "NOT_FOUND"


def test_run_on_a_thread_through_the_wrong_session_is_404(api, owner, thread):
    other_session = Conversation.objects.create(user=owner, title="Other")
    url = f"{SESSIONS}/{other_session.pk}/threads/{thread.pk}/runs"

    response = api.post(url, {"input": "Hi"}, format="json")

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "NOT_FOUND"
    assert not Message.objects.exists()
    assert not Run.objects.exists()


def test_run_in_a_malformed_or_missing_thread_is_404(api, session):
    for thread_id in ("not-a-uuid", "00000000-0000-0000-0000-000000000000"):
        url = f"{SESSIONS}/{session.pk}/threads/{thread_id}/runs"
        response = api.post(url, {"input": "Hi"}, format="json")
        assert response.status_code == 404, thread_id
    assert not Message.objects.exists()


def test_unauthenticated_run_is_401(anon, thread):
    response = post_run(anon, thread, {"input": "Hi"})

    assert response.status_code == 401
    assert not Message.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_user_message_and_run_are_committed_before_the_provider_answers(owner, openai_settings):
    session = Conversation.objects.create(user=owner, title="Committed first")
    thread = Thread.objects.create(conversation=session)
    gate = threading.Event()
    openai_settings.queue(Reply(text="Eventually", gate=gate))
    client = client_for(owner)
    results: queue.Queue = queue.Queue()

    def post():
        try:
            results.put(post_run(client, thread, {"input": "Are you committed?"}))
        finally:
            connections.close_all()

    worker = threading.Thread(target=post)
    worker.start()
    try:
        assert openai_settings.wait_for_requests(1)
        # The provider is still thinking: another connection already sees both rows.
        [message] = fetch_rows(Message, thread=thread.pk)
        [run] = fetch_rows(Run, thread=thread.pk)
    finally:
        gate.set()
        worker.join(timeout=20)

    assert (message["role"], message["content"]) == ("user", "Are you committed?")
    assert run["status"] == "in_progress"
    assert run["input_message_id"] == message["id"]
    response = results.get(timeout=5)
    assert response.status_code == 201
    assert response.json()["data"]["output_message"]["content"] == "Eventually"
    assert fetch_rows(Run, thread=thread.pk)[0]["status"] == "completed"


# One active run per thread.


def test_run_while_another_is_active_is_409_with_its_id(api, thread):
    active = runs.run_start(thread=thread, input="Still thinking", provider="echo", model="echo-1")

    response = post_run(api, thread, {"input": "Are you there?"})

    assert response.status_code == 409
    error = response.json()["error"]
    assert error["code"] == "RUN_IN_PROGRESS"
    assert error["details"]["active_run_id"] == str(active.pk)
    assert list(Message.objects.values_list("content", flat=True)) == ["Still thinking"]
    assert list(Run.objects.values_list("pk", flat=True)) == [active.pk]


def test_active_run_in_another_thread_does_not_block(api, session, thread):
    other = Thread.objects.create(conversation=session)
    runs.run_start(thread=other, input="Busy elsewhere", provider="echo", model="echo-1")

    response = post_run(api, thread, {"input": "Hi"})

    assert response.status_code == 201


@pytest.mark.django_db(transaction=True)
def test_concurrent_runs_on_one_thread_admit_exactly_one(owner, openai_settings):
    session = Conversation.objects.create(user=owner)
    thread = Thread.objects.create(conversation=session)
    # The winner's provider call waits at the server until the others have
    # their answers, so the run is active for the whole race on any machine.
    gate = threading.Event()
    openai_settings.default = Reply(text="Only one reply", gate=gate)
    attempts = 10
    clients = [client_for(owner) for _ in range(attempts)]
    barrier = threading.Barrier(attempts)
    results: queue.Queue = queue.Queue()

    def attempt(client):
        try:
            barrier.wait(timeout=10)
            results.put(post_run(client, thread, {"input": "Me first"}))
        except BaseException as exc:
            results.put(exc)
        finally:
            connections.close_all()

    workers = [threading.Thread(target=attempt, args=(client,)) for client in clients]
    for worker in workers:
        worker.start()
    try:
        responses = [results.get(timeout=20) for _ in range(attempts - 1)]
    finally:
        gate.set()
    responses.append(results.get(timeout=20))
    for worker in workers:
        worker.join(timeout=20)

    assert not [r for r in responses if isinstance(r, BaseException)]
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [201] + [409] * (attempts - 1)
    [winner] = [r.json()["data"] for r in responses if r.status_code == 201]
    assert winner["status"] == "completed"
    assert winner["output_message"]["content"] == "Only one reply"
    for response in responses:
        if response.status_code == 409:
            error = response.json()["error"]
            assert error["code"] == "RUN_IN_PROGRESS"
            assert error["details"]["active_run_id"] == winner["id"]
    assert len(openai_settings.requests) == 1
    user_rows = fetch_rows(Message, thread=thread.pk, role="user")
    assert [row["content"] for row in user_rows] == ["Me first"]
    assert [str(row["id"]) for row in fetch_rows(Run, thread=thread.pk)] == [winner["id"]]


@pytest.mark.django_db(transaction=True)
def test_concurrent_runs_on_different_threads_all_succeed(owner, settings):
    # Six runs of one user at once: more than the per-user cap allows.
    settings.MAX_ACTIVE_RUNS_PER_USER = 6
    session = Conversation.objects.create(user=owner)
    threads = [Thread.objects.create(conversation=session) for _ in range(6)]
    clients = [client_for(owner) for _ in threads]
    barrier = threading.Barrier(len(threads))
    results: queue.Queue = queue.Queue()

    def attempt(client, thread):
        try:
            barrier.wait(timeout=10)
            results.put(post_run(client, thread, {"input": f"Thread {thread.pk}"}))
        except BaseException as exc:
            results.put(exc)
        finally:
            connections.close_all()

    workers = [
        threading.Thread(target=attempt, args=pair) for pair in zip(clients, threads, strict=True)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=30)
    responses = [results.get(timeout=1) for _ in threads]

    assert [getattr(r, "status_code", r) for r in responses] == [201] * len(threads)
    for thread in threads:
        [run] = fetch_rows(Run, thread=thread.pk)
        assert run["status"] == "completed"
