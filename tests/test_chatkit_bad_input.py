"""Bad input to the ChatKit endpoint is a clear 4xx in the API's envelope, never a 500.

Each class of mistake: no or broken body, an unknown or unsupported request
type (named in the answer), params that fail the request's schema (the
field named), ids that name nothing of this session (404, as another user's
objects), a second turn while one runs (409 with the active run's id), and
the limits every request meets (413, 415, 429). Nothing is stored.
"""

import json

import pytest
from django.db.models import Count
from rest_framework.throttling import SimpleRateThrottle

from chatkit import stream_slots
from conversations import runs
from conversations.models import Conversation, Message, Run, Thread
from tests.chatkit_client import answer, call, chatkit_path, user_input

# Nothing here streams: each test's transaction is rolled back, which is fast.
pytestmark = pytest.mark.django_db


def snapshot() -> dict:
    return {
        model.__name__: model.objects.aggregate(n=Count("pk"))["n"]
        for model in (Conversation, Thread, Message, Run)
    }


def error_of(response, status: int) -> dict:
    error = answer(response, status)
    assert error["success"] is False
    return error["error"]


def post_raw(api, session, body: bytes, content_type: str = "application/json"):
    response = api.generic("POST", chatkit_path(session.pk), body, content_type=content_type)
    response.chatkit_request = {"raw": body.decode(errors="replace")}
    return response


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"", "type"),
        (b"{}", "type"),
        (b"[]", "non_field_errors"),
        (b'"threads.list"', "non_field_errors"),
        (b'{"type": 7, "params": {}}', "type"),
        (b'{"type": "threads.list"}', "params"),
        (b'{"type": "threads.list", "params": []}', "params"),
        (b'{"type": "threads.list", "params": {}, "metadata": "x"}', "metadata"),
    ],
)
def test_a_body_without_a_request_is_400_naming_what_is_missing(api, session, body, field):
    before = snapshot()

    error = error_of(post_raw(api, session, body), 400)

    assert error["code"] == "VALIDATION_ERROR"
    assert field in error["details"], error
    assert snapshot() == before


def test_a_body_that_is_not_json_is_400(api, session):
    assert error_of(post_raw(api, session, b"{nope"), 400)["code"] == "MALFORMED_REQUEST"


def test_an_unknown_type_is_400_naming_it(api, session):
    error = error_of(call(api, session.pk, "threads.explode", {}), 400)

    assert error["code"] == "VALIDATION_ERROR"
    assert "threads.explode" in error["details"]["type"][0]


@pytest.mark.parametrize(
    ("kind", "params"),
    [
        ("attachments.create", {"name": "a.png", "size": 1, "mime_type": "image/png"}),
        ("attachments.delete", {"attachment_id": "x"}),
        ("input.transcribe", {"audio_base64": "AAAA", "mime_type": "audio/webm"}),
        ("threads.add_client_tool_output", {"thread_id": "x", "result": {}}),
        ("threads.add_structured_input", {"thread_id": "x", "item_id": "y", "input": {}}),
        ("threads.custom_action", {"thread_id": "x", "action": {"type": "a", "payload": {}}}),
        ("threads.sync_custom_action", {"thread_id": "x", "action": {"type": "a"}}),
    ],
)
def test_an_unsupported_type_is_400_naming_it(api, session, kind, params):
    before = snapshot()

    error = error_of(call(api, session.pk, kind, params), 400)

    assert error["code"] == "VALIDATION_ERROR"
    assert kind in error["details"]["type"][0]
    assert "not supported" in error["details"]["type"][0]
    assert snapshot() == before


def with_input(**changes) -> dict:
    return {"input": {**user_input("hello"), **changes}}


@pytest.mark.parametrize(
    ("kind", "params", "field"),
    [
        ("threads.create", {}, "params.input"),
        ("threads.create", {"input": "hello"}, "params.input"),
        ("threads.create", with_input(content="hello"), "params.input.content"),
        ("threads.create", with_input(content=[]), "params.input.content"),
        (
            "threads.create",
            with_input(content=[{"type": "input_text", "text": "  "}]),
            "params.input.content",
        ),
        (
            "threads.create",
            with_input(content=[{"type": "input_text", "text": 5}]),
            "params.input.content[0].text",
        ),
        (
            "threads.create",
            with_input(content=[{"type": "image", "url": "x"}]),
            "params.input.content[0].type",
        ),
        (
            "threads.create",
            with_input(content=[{"type": "input_tag", "text": "t"}]),
            "params.input.content[0].id",
        ),
        (
            "threads.create",
            with_input(content=[{"type": "input_text", "text": "a\x00b"}]),
            "params.input.content",
        ),
        (
            "threads.create",
            with_input(content=[{"type": "input_text", "text": "x" * 32001}]),
            "params.input.content",
        ),
        ("threads.create", with_input(attachments=["att_1"]), "params.input.attachments"),
        ("threads.create", with_input(attachments=None), "params.input.attachments"),
        ("threads.create", with_input(quoted_text=5), "params.input.quoted_text"),
        ("threads.create", with_input(inference_options=None), "params.input.inference_options"),
        (
            "threads.create",
            with_input(inference_options={"model": 5}),
            "params.input.inference_options.model",
        ),
        ("threads.add_user_message", with_input(), "params.thread_id"),
        ("threads.add_user_message", {**with_input(), "thread_id": 5}, "params.thread_id"),
        ("threads.retry_after_item", {"thread_id": "x"}, "params.item_id"),
        ("threads.get_by_id", {}, "params.thread_id"),
        ("threads.list", {"limit": 0}, "params.limit"),
        ("threads.list", {"limit": 101}, "params.limit"),
        ("threads.list", {"limit": "5"}, "params.limit"),
        ("threads.list", {"limit": True}, "params.limit"),
        ("threads.list", {"order": "sideways"}, "params.order"),
        ("threads.list", {"after": 5}, "params.after"),
        ("items.list", {}, "params.thread_id"),
        ("threads.update", {"thread_id": "x"}, "params.title"),
        ("threads.update", {"thread_id": "x", "title": "   "}, "params.title"),
        ("threads.update", {"thread_id": "x", "title": "t" * 201}, "params.title"),
        ("threads.delete", {"thread_id": None}, "params.thread_id"),
        (
            "items.feedback",
            {"thread_id": "x", "item_ids": "a", "kind": "positive"},
            "params.item_ids",
        ),
        (
            "items.feedback",
            {"thread_id": "x", "item_ids": [1], "kind": "positive"},
            "params.item_ids",
        ),
        ("items.feedback", {"thread_id": "x", "item_ids": [], "kind": "meh"}, "params.kind"),
        (
            "items.feedback",
            {"thread_id": "x", "item_ids": ["a"] * 101, "kind": "positive"},
            "params.item_ids",
        ),
    ],
)
def test_params_that_fail_the_schema_are_400_naming_the_field(api, session, kind, params, field):
    before = snapshot()

    error = error_of(call(api, session.pk, kind, params), 400)

    assert error["code"] == "VALIDATION_ERROR"
    assert field in error["details"], error["details"]
    assert snapshot() == before


def test_on_disconnect_other_than_cancel_or_continue_is_400(api, session):
    response = call(
        api,
        session.pk,
        "threads.create",
        {"input": user_input("hi")},
        metadata={"on_disconnect": "explode"},
    )

    assert "metadata.on_disconnect" in error_of(response, 400)["details"]
    assert not Thread.objects.exists()


@pytest.mark.parametrize(
    "kind",
    ["threads.get_by_id", "items.list", "threads.delete", "threads.add_user_message"],
)
def test_a_thread_of_another_session_or_user_is_404(api, owner, stranger, session, kind):
    other_session = Thread.objects.create(conversation=Conversation.objects.create(user=owner))
    strangers = Thread.objects.create(conversation=Conversation.objects.create(user=stranger))
    before = snapshot()

    answers = [
        error_of(call(api, session.pk, kind, {"thread_id": thread_id, **with_input()}), 404)
        for thread_id in (str(other_session.pk), str(strangers.pk), "not-a-uuid", "")
    ]

    assert {error["code"] for error in answers} == {"NOT_FOUND"}
    assert snapshot() == before


def test_another_users_session_is_404_for_every_request(stranger_api, session):
    before = snapshot()

    for kind, params in [
        ("threads.list", {}),
        ("threads.create", with_input()),
    ]:
        assert error_of(call(stranger_api, session.pk, kind, params), 404)["code"] == "NOT_FOUND"
    assert error_of(call(stranger_api, "not-a-uuid", "threads.list", {}), 404)
    assert snapshot() == before


def test_no_token_is_401(anon, session):
    response = call(anon, session.pk, "threads.list", {})

    assert error_of(response, 401)["code"] == "NOT_AUTHENTICATED"
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_a_second_turn_while_one_runs_is_409_with_the_active_run(api, session, thread):
    active = runs.run_start(thread=thread, input="busy", provider="echo", model="echo-1")
    before = snapshot()

    error = error_of(
        call(
            api,
            session.pk,
            "threads.add_user_message",
            {"thread_id": str(thread.pk), **with_input()},
        ),
        409,
    )

    assert error["code"] == "RUN_IN_PROGRESS"
    assert error["details"]["active_run_id"] == str(active.pk)
    assert snapshot() == before


def test_a_retry_while_a_run_is_active_is_409(api, session, thread):
    done = runs.run_launch(thread=thread, input="one", mode=runs.Mode.WAIT).run
    runs.run_start(thread=thread, input="busy", provider="echo", model="echo-1")

    error = error_of(
        call(
            api,
            session.pk,
            "threads.retry_after_item",
            {"thread_id": str(thread.pk), "item_id": str(done.input_message_id)},
        ),
        409,
    )

    assert error["code"] == "RUN_IN_PROGRESS"


def test_a_retry_of_an_item_that_is_not_a_user_message_of_the_thread_is_404(api, session, thread):
    done = runs.run_launch(thread=thread, input="one", mode=runs.Mode.WAIT).run
    elsewhere = Thread.objects.create(conversation=session)
    other = runs.run_launch(thread=elsewhere, input="two", mode=runs.Mode.WAIT).run
    before = snapshot()

    for item_id in (str(done.output_message_id), str(other.input_message_id), "nope"):
        params = {"thread_id": str(thread.pk), "item_id": item_id}
        assert error_of(call(api, session.pk, "threads.retry_after_item", params), 404)
    assert snapshot() == before


def test_a_body_over_the_limit_is_413(api, session, settings):
    settings.MAX_BODY_BYTES = 1000
    body = json.dumps({"type": "threads.create", "params": with_input(content="x" * 2000)})

    assert error_of(post_raw(api, session, body.encode()), 413)["code"] == "PAYLOAD_TOO_LARGE"


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "application/json; charset=latin-1"],
)
def test_a_body_that_is_not_utf8_json_is_415(api, session, content_type):
    body = b'{"type": "threads.list", "params": {}}'

    error = error_of(post_raw(api, session, body, content_type), 415)

    assert error["code"] == "UNSUPPORTED_MEDIA_TYPE"


def test_turns_count_against_the_runs_throttle(api, session, thread, monkeypatch):
    rates = {**SimpleRateThrottle.THROTTLE_RATES, "runs": "1/min"}
    monkeypatch.setattr(SimpleRateThrottle, "THROTTLE_RATES", rates)
    runs_url = f"/api/v1/chatkit/sessions/{session.pk}/threads/{thread.pk}/runs"
    assert api.post(runs_url, {"input": "one"}, format="json").status_code == 201
    before = snapshot()

    refused = call(api, session.pk, "threads.create", with_input())
    listed = call(api, session.pk, "threads.list", {})

    error = error_of(refused, 429)
    assert error["code"] == "THROTTLED"
    assert int(refused["Retry-After"]) > 0
    assert listed.status_code == 200
    assert snapshot() == before


def test_past_the_stream_cap_a_turn_is_429_and_creates_nothing(api, session, settings):
    settings.MAX_STREAMS_PER_USER = 1
    held = stream_slots.acquire(user_id=session.user_id)
    try:
        before = snapshot()
        error = error_of(call(api, session.pk, "threads.create", with_input()), 429)
    finally:
        held.release()

    assert error["details"]["reason"] == "streams"
    assert snapshot() == before


def test_a_create_refused_by_the_active_run_cap_leaves_no_thread(api, session, thread, settings):
    settings.MAX_ACTIVE_RUNS_PER_USER = 1
    runs.run_start(thread=thread, input="busy", provider="echo", model="echo-1")
    before = snapshot()

    error = error_of(call(api, session.pk, "threads.create", with_input()), 429)

    assert error["details"]["reason"] == "active_runs"
    assert snapshot() == before
