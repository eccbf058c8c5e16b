"""A stranger learns nothing about another user's sessions and threads.

Another user's object, a missing one and a malformed id must be answered
byte for byte alike (apart from the request id), and nothing may change.
"""

import uuid

import pytest

from conversations.models import Conversation, Thread

SESSIONS = "/api/v1/chatkit/sessions"
MALFORMED = "not-a-uuid"

# (method, URL template, body). {s} is a session id, {t} a thread id.
ROUTES = [
    ("get", "/{s}", None),
    ("patch", "/{s}", {"title": "pwned"}),
    ("delete", "/{s}", None),
    ("get", "/{s}/threads", None),
    ("post", "/{s}/threads", {"title": "pwned"}),
    ("get", "/{s}/threads/{t}", None),
    ("patch", "/{s}/threads/{t}", {"title": "pwned"}),
    ("delete", "/{s}/threads/{t}", None),
]
ROUTE_IDS = [f"{method.upper()} {template}" for method, template, _ in ROUTES]


@pytest.fixture
def owners_session(owner) -> Conversation:
    return Conversation.objects.create(user=owner, title="Private", metadata={"k": "v"})


@pytest.fixture
def owners_thread(owners_session) -> Thread:
    return Thread.objects.create(conversation=owners_session, title="Private thread")


@pytest.fixture
def strangers_session(stranger) -> Conversation:
    return Conversation.objects.create(user=stranger, title="Mine")


def snapshot() -> tuple[list[dict], list[dict]]:
    return (
        list(Conversation.objects.order_by("pk").values()),
        list(Thread.objects.order_by("pk").values()),
    )


def call(client, method: str, url: str, body):
    if body is None:
        return getattr(client, method)(url)
    return getattr(client, method)(url, body, format="json")


def comparable(response) -> tuple[int, list[tuple[str, str]], bytes]:
    """Status, headers and body with this response's request id blanked out."""
    request_id = response["X-Request-ID"]
    headers = sorted((k, v) for k, v in response.items() if k != "X-Request-ID")
    return response.status_code, headers, response.content.replace(request_id.encode(), b"<id>")


@pytest.mark.parametrize(("method", "template", "body"), ROUTES, ids=ROUTE_IDS)
def test_foreign_missing_and_malformed_ids_look_the_same(
    stranger_api, owners_session, owners_thread, method, template, body
):
    before = snapshot()
    probes = {
        "foreign": template.format(s=owners_session.pk, t=owners_thread.pk),
        "missing": template.format(s=uuid.uuid4(), t=uuid.uuid4()),
        "malformed": template.format(s=MALFORMED, t=MALFORMED),
    }

    answers = {
        name: comparable(call(stranger_api, method, SESSIONS + path, body))
        for name, path in probes.items()
    }

    assert answers["foreign"][0] == 404
    assert b'"code":"NOT_FOUND"' in answers["foreign"][2]
    assert answers["foreign"] == answers["missing"] == answers["malformed"]
    assert snapshot() == before


@pytest.mark.parametrize(
    ("method", "template", "body"),
    [route for route in ROUTES if "{t}" in route[1]],
    ids=[i for i, route in zip(ROUTE_IDS, ROUTES, strict=True) if "{t}" in route[1]],
)
def test_foreign_thread_through_own_session_looks_missing(
    stranger_api, strangers_session, owners_thread, method, template, body
):
    before = snapshot()
    probes = {
        "foreign": template.format(s=strangers_session.pk, t=owners_thread.pk),
        "missing": template.format(s=strangers_session.pk, t=uuid.uuid4()),
        "malformed": template.format(s=strangers_session.pk, t=MALFORMED),
    }

    answers = {
        name: comparable(call(stranger_api, method, SESSIONS + path, body))
        for name, path in probes.items()
    }

    assert answers["foreign"][0] == 404
    assert answers["foreign"] == answers["missing"] == answers["malformed"]
    assert snapshot() == before


def test_stranger_cannot_create_thread_in_foreign_session(stranger_api, owners_session):
    response = stranger_api.post(f"{SESSIONS}/{owners_session.pk}/threads", {}, format="json")

    assert response.status_code == 404
    assert not Thread.objects.filter(conversation=owners_session).exists()


def test_stranger_never_sees_foreign_sessions_in_list(
    stranger_api, owners_session, strangers_session
):
    response = stranger_api.get(SESSIONS)

    assert response.status_code == 200
    assert [s["id"] for s in response.json()["data"]] == [str(strangers_session.pk)]
    assert str(owners_session.pk).encode() not in response.content


@pytest.mark.parametrize("cursor", ["after", "before"])
def test_foreign_cursor_looks_like_a_missing_one(stranger_api, owners_session, cursor):
    headers = {"HTTP_X_REQUEST_ID": "cursor-probe"}

    foreign = stranger_api.get(SESSIONS, {cursor: str(owners_session.pk)}, **headers)
    missing = stranger_api.get(SESSIONS, {cursor: str(uuid.uuid4())}, **headers)

    assert foreign.status_code == 400
    assert foreign.content == missing.content


def test_foreign_thread_as_cursor_looks_like_a_missing_one(
    stranger_api, strangers_session, owners_thread
):
    url = f"{SESSIONS}/{strangers_session.pk}/threads"
    headers = {"HTTP_X_REQUEST_ID": "cursor-probe"}

    foreign = stranger_api.get(url, {"after": str(owners_thread.pk)}, **headers)
    missing = stranger_api.get(url, {"after": str(uuid.uuid4())}, **headers)

    assert foreign.status_code == 400
    assert foreign.content == missing.content


def test_owner_still_sees_everything_after_the_probes(
    api, stranger_api, owners_session, owners_thread
):
    for method, template, body in ROUTES:
        path = template.format(s=owners_session.pk, t=owners_thread.pk)
        call(stranger_api, method, SESSIONS + path, body)

    session = api.get(f"{SESSIONS}/{owners_session.pk}").json()["data"]
    thread = api.get(f"{SESSIONS}/{owners_session.pk}/threads/{owners_thread.pk}").json()["data"]
    assert session["title"] == "Private"
    assert thread["title"] == "Private thread"
