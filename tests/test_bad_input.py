"""Bad bodies and bad query strings get a 4xx envelope, never a 500, and store nothing."""

import json
import uuid

import pytest
from django.conf import settings

from conversations.models import Conversation, Thread
from conversations.validators import has_forbidden_characters

SESSIONS = "/api/v1/chatkit/sessions"
WRITE_TARGETS = ["create session", "patch session", "create thread", "patch thread"]
LIST_TARGETS = ["list sessions", "list threads"]


@pytest.fixture
def session(owner) -> Conversation:
    return Conversation.objects.create(user=owner, title="Kept", metadata={"k": "v"})


@pytest.fixture
def thread(session) -> Thread:
    return Thread.objects.create(conversation=session, title="Kept thread")


@pytest.fixture
def urls(session, thread) -> dict[str, tuple[str, str]]:
    return {
        "create session": ("POST", SESSIONS),
        "patch session": ("PATCH", f"{SESSIONS}/{session.pk}"),
        "create thread": ("POST", f"{SESSIONS}/{session.pk}/threads"),
        "patch thread": ("PATCH", f"{SESSIONS}/{session.pk}/threads/{thread.pk}"),
        "list sessions": ("GET", SESSIONS),
        "list threads": ("GET", f"{SESSIONS}/{session.pk}/threads"),
    }


def snapshot() -> tuple[list[dict], list[dict]]:
    return (
        list(Conversation.objects.order_by("pk").values()),
        list(Thread.objects.order_by("pk").values()),
    )


def send(client, method: str, url: str, raw: bytes | str, content_type="application/json"):
    return client.generic(method, url, raw, content_type=content_type)


def assert_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.content
    body = response.json()
    assert body["success"] is False
    assert body["error"]["code"] == code
    return body["error"]


# Field values that are the wrong type, too long, or not allowed at all.
# (body, the key of error.details that must name the problem)
FIELD_CASES = [
    ({"title": 5}, "title"),
    ({"title": True}, "title"),
    ({"title": None}, "title"),
    ({"title": ["a"]}, "title"),
    ({"title": {"a": "b"}}, "title"),
    ({"title": "x" * 201}, "title"),
    ({"title": "a\x00b"}, "title"),
    ({"title": "lone \ud800 surrogate"}, "title"),
    ({"metadata": "x"}, "metadata"),
    ({"metadata": []}, "metadata"),
    ({"metadata": ["a", "b"]}, "metadata"),
    ({"metadata": None}, "metadata"),
    ({"metadata": 5}, "metadata"),
    ({"metadata": {"a": 1}}, "metadata"),
    ({"metadata": {"a": None}}, "metadata"),
    ({"metadata": {"a": True}}, "metadata"),
    ({"metadata": {"a": {"b": "c"}}}, "metadata"),
    ({"metadata": {"a": ["b"]}}, "metadata"),
    ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
    ({"metadata": {"k" * 65: "v"}}, "metadata"),
    ({"metadata": {"": "v"}}, "metadata"),
    ({"metadata": {"k": "v" * 513}}, "metadata"),
    ({"metadata": {"k\x00": "v"}}, "metadata"),
    ({"metadata": {"k": "v\x00"}}, "metadata"),
    ({"instructions": 5}, "instructions"),
    ({"instructions": None}, "instructions"),
    ({"instructions": "i" * 32001}, "instructions"),
    ({"instructions": "a\x00b"}, "instructions"),
    ({"id": str(uuid.uuid4())}, "id"),
    ({"user_id": str(uuid.uuid4())}, "user_id"),
    ({"session_id": str(uuid.uuid4())}, "session_id"),
    ({"created_at": "2026-01-01T00:00:00Z"}, "created_at"),
    ({"updated_at": "2026-01-01T00:00:00Z"}, "updated_at"),
    ({"status": "completed"}, "status"),
    ({"foo": "bar"}, "foo"),
    ({"title": "Fine", "foo": "bar"}, "foo"),
    ({"title": "Fine", "metadata": {"a": 1}}, "metadata"),
]


def _case_id(case: tuple[dict, str]) -> str:
    return json.dumps(case[0])[:40]


@pytest.mark.parametrize("target", WRITE_TARGETS)
@pytest.mark.parametrize(("body", "key"), FIELD_CASES, ids=[_case_id(c) for c in FIELD_CASES])
def test_bad_field_is_400_naming_it(api, urls, target, body, key):
    method, url = urls[target]
    before = snapshot()

    # ensure_ascii keeps a lone surrogate sendable as a \\ud800 escape.
    response = send(api, method, url, json.dumps(body, ensure_ascii=True))

    error = assert_error(response, 400, "VALIDATION_ERROR")
    assert key in error["details"]
    assert all(isinstance(m, str) for m in error["details"][key])
    assert snapshot() == before


# Whole bodies that are not a JSON object, or not JSON at all.
# (raw body, status, code)
BODY_CASES = [
    (b'{"title": ', 400, "MALFORMED_REQUEST"),
    (b'{"title": "x",}', 400, "MALFORMED_REQUEST"),
    (b"{'title': 'x'}", 400, "MALFORMED_REQUEST"),
    (b'{"title": NaN}', 400, "MALFORMED_REQUEST"),
    (b'{"metadata": {"a": Infinity}}', 400, "MALFORMED_REQUEST"),
    (b'{"title": "\xff\xfe"}', 400, "MALFORMED_REQUEST"),
    (b"[]", 400, "VALIDATION_ERROR"),
    (b'[{"title": "x"}]', 400, "VALIDATION_ERROR"),
    (b'"title"', 400, "VALIDATION_ERROR"),
    (b"5", 400, "VALIDATION_ERROR"),
    (b"true", 400, "VALIDATION_ERROR"),
    (b"null", 400, "VALIDATION_ERROR"),
    (b"[" * 100_000 + b"]" * 100_000, 400, "MALFORMED_REQUEST"),
    (b'{"metadata": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", 400, "MALFORMED_REQUEST"),
    (b'{"foo": ' + b"[" * 500 + b"]" * 500 + b"}", 400, "VALIDATION_ERROR"),
    (b'{"title": 1e999}', 400, "VALIDATION_ERROR"),
    (b'{"title": 1' + b"0" * 5000 + b"}", 400, "MALFORMED_REQUEST"),
]


@pytest.mark.parametrize("target", WRITE_TARGETS)
@pytest.mark.parametrize(
    ("raw", "status", "code"), BODY_CASES, ids=[repr(c[0][:24]) for c in BODY_CASES]
)
def test_body_that_is_not_a_json_object(api, urls, target, raw, status, code):
    method, url = urls[target]
    before = snapshot()

    response = send(api, method, url, raw)

    error = assert_error(response, status, code)
    assert "Traceback" not in json.dumps(error)
    assert snapshot() == before


def test_parser_message_is_not_echoed(api, urls):
    method, url = urls["create session"]

    response = send(api, method, url, b'{"title": "x" "y"}')

    assert_error(response, 400, "MALFORMED_REQUEST")
    for leak in ("Expecting", "line 1", "column", "char"):
        assert leak not in response.content.decode()


@pytest.mark.parametrize("target", WRITE_TARGETS)
@pytest.mark.parametrize(
    ("content_type", "raw"),
    [
        ("text/plain", '{"title": "x"}'),
        ("application/x-www-form-urlencoded", "title=x"),
        (
            "multipart/form-data; boundary=zz",
            '--zz\r\nContent-Disposition: form-data; name="title"\r\n\r\nx\r\n--zz--\r\n',
        ),
        ("application/xml", "<title>x</title>"),
        ("application/octet-stream", '{"title": "x"}'),
    ],
)
def test_body_that_is_not_json_is_415(api, urls, target, content_type, raw):
    method, url = urls[target]
    before = snapshot()

    response = send(api, method, url, raw, content_type=content_type)

    assert_error(response, 415, "UNSUPPORTED_MEDIA_TYPE")
    assert snapshot() == before


def test_json_with_charset_is_accepted(api, urls):
    method, url = urls["create session"]

    response = send(api, method, url, '{"title": "x"}', "application/json; charset=utf-8")

    assert response.status_code == 201


@pytest.mark.parametrize("target", WRITE_TARGETS)
def test_body_over_the_limit_is_413(api, urls, target):
    method, url = urls[target]
    before = snapshot()
    limit = settings.MAX_BODY_BYTES
    envelope = b'{"title": ""}'
    raw = envelope[:-2] + b"x" * (limit + 1 - len(envelope)) + envelope[-2:]
    assert len(raw) == limit + 1

    response = send(api, method, url, raw)

    error = assert_error(response, 413, "PAYLOAD_TOO_LARGE")
    assert error["details"] == {"max_bytes": limit}
    assert snapshot() == before


def test_body_at_the_limit_is_read(api, urls):
    method, url = urls["create session"]
    before = snapshot()
    envelope = b'{"title": ""}'
    raw = envelope[:-2] + b"x" * (settings.MAX_BODY_BYTES - len(envelope)) + envelope[-2:]

    response = send(api, method, url, raw)

    # Read and judged on its content: the title is too long, not the body.
    error = assert_error(response, 400, "VALIDATION_ERROR")
    assert "title" in error["details"]
    assert snapshot() == before


@pytest.mark.parametrize(
    ("content_length", "status", "code"),
    [
        ("abc", 400, "MALFORMED_REQUEST"),
        ("-1", 400, "MALFORMED_REQUEST"),
        ("1e9", 400, "MALFORMED_REQUEST"),
        # A digit to str.isdigit(), not to int().
        pytest.param("\u00b2", 400, "MALFORMED_REQUEST", id="superscript-two"),
        # Past int()'s 4300-digit limit for str conversion.
        pytest.param("9" * 5000, 413, "PAYLOAD_TOO_LARGE", id="5000-digits"),
    ],
)
def test_bad_content_length_is_rejected(api, urls, content_length, status, code):
    method, url = urls["create session"]
    api.raise_request_exception = False
    before = snapshot()

    response = api.generic(
        method, url, b"{}", content_type="application/json", CONTENT_LENGTH=content_length
    )

    assert_error(response, status, code)
    assert snapshot() == before


# Paging parameters. (query, the key of error.details that must name the problem)
QUERY_CASES = [
    ({"limit": "0"}, "limit"),
    ({"limit": "101"}, "limit"),
    ({"limit": "abc"}, "limit"),
    ({"limit": "-1"}, "limit"),
    ({"limit": "1.5"}, "limit"),
    ({"limit": ""}, "limit"),
    ({"limit": "\u0665"}, "limit"),  # ARABIC-INDIC DIGIT FIVE
    ({"order": "sideways"}, "order"),
    ({"order": ""}, "order"),
    ({"after": "not-a-uuid"}, "after"),
    ({"before": "not-a-uuid"}, "before"),
    ({"after": "missing"}, "after"),
    ({"before": "missing"}, "before"),
    ({"after": "foreign"}, "after"),
    ({"before": "foreign"}, "before"),
    ({"after": "elsewhere"}, "after"),
    ({"before": "elsewhere"}, "before"),
]


@pytest.mark.parametrize("target", LIST_TARGETS)
@pytest.mark.parametrize(("query", "key"), QUERY_CASES, ids=[str(c[0]) for c in QUERY_CASES])
def test_bad_paging_parameter_is_400(api, owner, stranger, urls, target, query, key):
    """'missing' is an unknown id; 'foreign' an id of another user's object of the same
    kind; 'elsewhere' an id of one of the owner's objects that is not in this list."""
    foreign_session = Conversation.objects.create(user=stranger)
    other_own_session = Conversation.objects.create(user=owner)
    cursors = {
        "missing": str(uuid.uuid4()),
        "foreign": {
            "list sessions": str(foreign_session.pk),
            "list threads": str(Thread.objects.create(conversation=foreign_session).pk),
        }[target],
        "elsewhere": {
            # A thread id is a valid UUID but no session.
            "list sessions": str(Thread.objects.create(conversation=other_own_session).pk),
            "list threads": str(Thread.objects.create(conversation=other_own_session).pk),
        }[target],
    }
    query = {name: cursors.get(value, value) for name, value in query.items()}
    _, url = urls[target]
    before = snapshot()

    response = api.get(url, query)

    error = assert_error(response, 400, "VALIDATION_ERROR")
    assert key in error["details"]
    assert snapshot() == before


@pytest.mark.parametrize(
    ("text", "forbidden"),
    [
        ("", False),
        ("plain words", False),
        ("emoji \U0001f600 and accents é", False),
        ("\x00", True),
        ("end\x00", True),
        ("\ud800 first", True),
        ("in \udbff the middle", True),
        ("last \udfff", True),
        ("x" * 32_000 + "\udc00", True),
        ("\ud7ff \ue000 either side of the surrogates", False),
    ],
)
def test_forbidden_characters_are_nul_and_surrogates_only(text, forbidden):
    assert has_forbidden_characters(text) is forbidden
