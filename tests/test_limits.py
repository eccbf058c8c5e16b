"""Limits at the edges: sizes, bytes that are not text, and hostile query strings and headers.

Every case is answered with a 4xx envelope (never a 500), before any provider
call and without storing anything; the largest valid values are accepted.
"""

import json
import uuid

import pytest
from django.conf import settings

from conversations import runs
from conversations.models import Conversation, Message, Run, Thread
from tests.openai_server import Reply

pytest_plugins = ["tests.conftest_openai"]

SESSIONS = "/api/v1/chatkit/sessions"
MAX_INPUT = 32000


@pytest.fixture
def session(owner) -> Conversation:
    return Conversation.objects.create(user=owner, title="Limits", metadata={"k": "v"})


@pytest.fixture
def thread(session) -> Thread:
    return Thread.objects.create(conversation=session, title="Limits thread")


@pytest.fixture
def run(thread) -> Run:
    started = runs.run_start(thread=thread, input="first", provider="echo", model="m")
    return runs.run_cancel(run_id=started.pk)


def runs_path(thread) -> str:
    return f"{SESSIONS}/{thread.conversation_id}/threads/{thread.pk}/runs"


def snapshot() -> tuple:
    return tuple(
        list(model.objects.order_by("pk").values())
        for model in (Conversation, Thread, Message, Run)
    )


def assert_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.content
    body = response.json()
    assert body["success"] is False
    assert body["error"]["code"] == code
    assert body["error"]["request_id"] == response["X-Request-ID"]
    return body["error"]


def send_raw(client, method: str, url: str, raw: bytes, **extra):
    return client.generic(method, url, raw, content_type="application/json", **extra)


# Run input size --------------------------------------------------------------


@pytest.mark.parametrize("char", ["a", "é", "語", "😀"], ids=["ascii", "latin", "cjk", "astral"])
def test_input_of_32000_chars_is_accepted(api, thread, openai_settings, char):
    openai_settings.default = Reply(text="ok")
    text = char * MAX_INPUT

    response = api.post(runs_path(thread), {"input": text}, format="json")

    assert response.status_code == 201, response.content[:300]
    assert response.json()["data"]["status"] == "completed"
    assert response.json()["data"]["input_message"]["content"] == text
    assert len(openai_settings.requests) == 1
    assert openai_settings.requests[0]["messages"][-1]["content"] == text
    assert Message.objects.get(thread=thread, role="user").content == text


@pytest.mark.parametrize("char", ["a", "😀"], ids=["ascii", "astral"])
def test_input_of_32001_chars_is_400_before_any_provider_call(api, thread, openai_settings, char):
    before = snapshot()

    response = api.post(runs_path(thread), {"input": char * (MAX_INPUT + 1)}, format="json")

    error = assert_error(response, 400, "VALIDATION_ERROR")
    assert "input" in error["details"]
    assert openai_settings.requests == []
    assert snapshot() == before


def test_run_instructions_over_32000_chars_are_400_before_any_provider_call(
    api, thread, openai_settings
):
    before = snapshot()

    response = api.post(
        runs_path(thread), {"input": "hi", "instructions": "i" * (MAX_INPUT + 1)}, format="json"
    )

    assert "instructions" in assert_error(response, 400, "VALIDATION_ERROR")["details"]
    assert openai_settings.requests == []
    assert snapshot() == before


# NUL and lone surrogates -----------------------------------------------------


def _write_targets(session, thread) -> dict[str, tuple[str, str, dict]]:
    base = f"{SESSIONS}/{session.pk}"
    return {
        "create session": ("POST", SESSIONS, {}),
        "patch session": ("PATCH", base, {}),
        "create thread": ("POST", f"{base}/threads", {}),
        "patch thread": ("PATCH", f"{base}/threads/{thread.pk}", {}),
        "create run": ("POST", runs_path(thread), {"input": "hello"}),
    }


# (target, field, value) with a NUL somewhere
NUL_CASES = [
    ("create run", "input", "before\x00after"),
    ("create run", "input", "\x00"),
    ("create run", "instructions", "be\x00brief"),
    ("create run", "metadata", {"k": "v\x00"}),
    ("create run", "metadata", {"k\x00": "v"}),
    ("create session", "title", "a\x00b"),
    ("create session", "instructions", "a\x00b"),
    ("create session", "metadata", {"k": "\x00"}),
    ("patch session", "title", "a\x00b"),
    ("patch session", "metadata", {"\x00": "v"}),
    ("create thread", "title", "a\x00b"),
    ("create thread", "metadata", {"k": "a\x00"}),
    ("patch thread", "title", "\x00"),
    ("patch thread", "metadata", {"k": "a\x00b"}),
]


@pytest.mark.parametrize(
    ("target", "field", "value"),
    NUL_CASES,
    ids=[f"{t}-{f}-{i}" for i, (t, f, _) in enumerate(NUL_CASES)],
)
def test_nul_is_400_naming_the_field(api, session, thread, openai_settings, target, field, value):
    method, url, body = _write_targets(session, thread)[target]
    before = snapshot()

    response = send_raw(api, method, url, json.dumps({**body, field: value}).encode())

    assert field in assert_error(response, 400, "VALIDATION_ERROR")["details"]
    assert snapshot() == before
    assert openai_settings.requests == []


# Lone surrogates written as JSON escapes: valid JSON, not valid Unicode text.
SURROGATE_BODIES = [
    ("create run", "input", '"\\ud800"'),
    ("create run", "input", '"text \\udfff text"'),
    ("create run", "input", '"\\ude00\\ud83d"'),  # a pair in the wrong order
    ("create run", "metadata", '{"k": "\\ud800"}'),
    ("create run", "metadata", '{"\\ud800": "v"}'),
    ("create session", "title", '"\\ud800"'),
    ("create session", "instructions", '"\\udbff"'),
    ("patch session", "metadata", '{"k": "\\udc00"}'),
    ("create thread", "title", '"x\\ud800"'),
    ("patch thread", "title", '"\\ud800y"'),
]


@pytest.mark.parametrize(
    ("target", "field", "raw_value"),
    SURROGATE_BODIES,
    ids=[f"{t}-{f}-{i}" for i, (t, f, _) in enumerate(SURROGATE_BODIES)],
)
def test_lone_surrogate_escape_is_400(
    api, session, thread, openai_settings, target, field, raw_value
):
    method, url, body = _write_targets(session, thread)[target]
    prefix = json.dumps(body)[:-1]
    raw = f'{prefix}{", " if body else ""}"{field}": {raw_value}}}'.encode()
    json.loads(raw)  # the body itself is valid JSON
    before = snapshot()

    response = send_raw(api, method, url, raw)

    assert response.status_code == 400, response.content
    assert field in assert_error(response, 400, "VALIDATION_ERROR")["details"]
    assert snapshot() == before
    assert openai_settings.requests == []


def test_a_valid_surrogate_pair_escape_is_one_character(api, thread, openai_settings):
    raw = b'{"input": "smile \\ud83d\\ude00"}'

    response = send_raw(api, "POST", runs_path(thread), raw)

    assert response.status_code == 201, response.content
    assert response.json()["data"]["input_message"]["content"] == "smile 😀"


# Bytes that are not UTF-8 ---------------------------------------------------

INVALID_UTF8 = [
    b'{"title": "\xff\xfe"}',
    b'{"title": "caf\xe9"}',  # Latin-1, not UTF-8
    b'{"title": "\xc3"}',  # a truncated sequence
    b'{"title": "\xed\xa0\x80"}',  # an encoded surrogate (CESU-8)
    b'{"title": "\xc0\xaf"}',  # an overlong encoding
    b"\xef\xbb\xbf\xff",  # a BOM, then garbage
]


@pytest.mark.parametrize("raw", INVALID_UTF8, ids=[str(i) for i in range(len(INVALID_UTF8))])
@pytest.mark.parametrize("target", ["create session", "patch thread", "create run", "register"])
def test_invalid_utf8_body_is_400_malformed_request(
    api, anon, session, thread, openai_settings, target, raw
):
    targets = {
        **{name: (m, u) for name, (m, u, _) in _write_targets(session, thread).items()},
        "register": ("POST", "/api/v1/auth/register"),
    }
    method, url = targets[target]
    if target == "create run":
        raw = raw.replace(b'"title"', b'"input"')
    client = anon if target == "register" else api
    before = snapshot()

    response = send_raw(client, method, url, raw)

    error = assert_error(response, 400, "MALFORMED_REQUEST")
    assert error["details"] is None
    assert "codec" not in error["message"]
    assert snapshot() == before
    assert openai_settings.requests == []


# Query strings -------------------------------------------------------------

LONG = "a" * 10_000
LONG_UUIDISH = "0" * 10_000


def _list_urls(session, thread, run) -> dict[str, str]:
    base = f"{SESSIONS}/{session.pk}/threads/{thread.pk}"
    return {
        "sessions": SESSIONS,
        "threads": f"{SESSIONS}/{session.pk}/threads",
        "messages": f"{base}/messages",
        "runs": f"{base}/runs",
    }


QUERY_VALUES = {
    "nul": "\x00",
    "nul_in_uuid": f"{uuid.uuid4()}\x00",
    "10000_chars": LONG,
    "10000_zeros": LONG_UUIDISH,
    "10000_digits": "9" * 10_000,
}


@pytest.mark.parametrize("value", list(QUERY_VALUES.values()), ids=list(QUERY_VALUES))
@pytest.mark.parametrize("param", ["after", "before", "limit", "order"])
@pytest.mark.parametrize("target", ["sessions", "threads", "messages", "runs"])
def test_hostile_paging_parameter_is_400(api, session, thread, run, target, param, value):
    url = _list_urls(session, thread, run)[target]
    api.raise_request_exception = False

    response = api.get(url, {param: value})

    assert param in assert_error(response, 400, "VALIDATION_ERROR")["details"]


@pytest.mark.parametrize("value", list(QUERY_VALUES.values()), ids=list(QUERY_VALUES))
def test_hostile_run_id_filter_is_400(api, session, thread, run, value):
    api.raise_request_exception = False

    response = api.get(_list_urls(session, thread, run)["messages"], {"run_id": value})

    assert "run_id" in assert_error(response, 400, "VALIDATION_ERROR")["details"]


@pytest.mark.parametrize("value", list(QUERY_VALUES.values()), ids=list(QUERY_VALUES))
def test_hostile_last_event_id_is_400(api, thread, run, value):
    api.raise_request_exception = False
    url = f"{runs_path(thread)}/{run.pk}/events"

    by_query = api.get(url, {"last_event_id": value})
    assert_error(by_query, 400, "VALIDATION_ERROR")
    if "\x00" not in value:  # a header cannot carry NUL
        by_header = api.get(url, HTTP_LAST_EVENT_ID=value)
        assert_error(by_header, 400, "VALIDATION_ERROR")


def test_query_string_with_a_raw_nul_and_bad_percent_escapes_is_not_a_500(api, session):
    api.raise_request_exception = False
    for query in ("after=%00", "limit=%00%00", "order=%ZZ", "after=%", "%00=%00", "after=%ff%fe"):
        response = api.get(f"{SESSIONS}?{query}")
        assert response.status_code in (200, 400), (query, response.content)
        assert response.json()["success"] is (response.status_code == 200)


@pytest.mark.parametrize("segment", ["%00", "a" * 10_000, "%ff%fe", "..%2f..%2fetc"])
def test_hostile_path_segment_is_404(api, session, segment):
    api.raise_request_exception = False

    for url in (f"{SESSIONS}/{segment}", f"{SESSIONS}/{session.pk}/threads/{segment}"):
        response = api.get(url)
        assert_error(response, 404, "NOT_FOUND")


# Headers -------------------------------------------------------------------


@pytest.mark.parametrize(
    "sent", ["r" * 10_000, "r" * 129, "ok\x00id", "spaces are not ok", "ünïcode"]
)
def test_insane_request_id_is_replaced(api, sent):
    response = api.get(f"{SESSIONS}/{uuid.uuid4()}", HTTP_X_REQUEST_ID=sent)

    replaced = response["X-Request-ID"]
    assert replaced != sent
    assert 1 <= len(replaced) <= 128
    assert assert_error(response, 404, "NOT_FOUND")["request_id"] == replaced
    assert sent.encode("utf-8", "replace") not in response.content


def test_request_id_of_128_sane_chars_is_kept(api):
    sent = "R" * 127 + "9"

    response = api.get(SESSIONS, HTTP_X_REQUEST_ID=sent)

    assert response["X-Request-ID"] == sent


# Content-Length over the limit --------------------------------------------


class UnreadableBody:
    """A request body that records any attempt to read it."""

    def __init__(self) -> None:
        self.reads = 0

    def read(self, *args) -> bytes:
        self.reads += 1
        raise AssertionError("the body was read")

    def readline(self, *args) -> bytes:
        return self.read()

    def __iter__(self):
        self.read()
        return iter(())


@pytest.mark.parametrize(
    "length",
    [settings.MAX_BODY_BYTES + 1, 10 * settings.MAX_BODY_BYTES, 2**63, int("9" * 30)],
    ids=["limit+1", "ten_times", "2**63", "30_digits"],
)
@pytest.mark.parametrize("target", ["create session", "create run", "register", "token"])
def test_content_length_over_the_limit_is_413_before_the_body_is_read(
    api, anon, session, thread, openai_settings, target, length
):
    urls = {
        "create session": SESSIONS,
        "create run": runs_path(thread),
        "register": "/api/v1/auth/register",
        "token": "/api/v1/auth/token",
    }
    client = anon if target in ("register", "token") else api
    client.raise_request_exception = False
    body = UnreadableBody()
    before = snapshot()

    response = client.generic(
        "POST",
        urls[target],
        b"",
        content_type="application/json",
        CONTENT_LENGTH=str(length),
        **{"wsgi.input": body},
    )

    error = assert_error(response, 413, "PAYLOAD_TOO_LARGE")
    assert error["details"] == {"max_bytes": settings.MAX_BODY_BYTES}
    assert body.reads == 0
    assert snapshot() == before
    assert openai_settings.requests == []


def test_content_length_with_thousands_of_digits_is_413_not_500(api):
    api.raise_request_exception = False

    response = send_raw(api, "POST", SESSIONS, b"{}", CONTENT_LENGTH="9" * 10_000)

    assert_error(response, 413, "PAYLOAD_TOO_LARGE")


# The largest legal bodies --------------------------------------------------

# One character of the astral planes is a surrogate pair in JSON's default
# ASCII-only encoding: 12 bytes, the most any legal character costs.
ASTRAL = "\U0001f600"


def _longest_metadata() -> dict[str, str]:
    keys = [ASTRAL * 63 + chr(0x1F300 + index) for index in range(16)]
    return {key: ASTRAL * 512 for key in keys}


def _largest_bodies() -> dict[str, tuple[str, dict]]:
    return {
        "create run": (
            "POST",
            {
                "input": ASTRAL * MAX_INPUT,
                "instructions": ASTRAL * MAX_INPUT,
                "metadata": _longest_metadata(),
                "stream": False,
                "background": False,
            },
        ),
        "create session": (
            "POST",
            {
                "title": ASTRAL * 200,
                "instructions": ASTRAL * MAX_INPUT,
                "metadata": _longest_metadata(),
            },
        ),
        "patch session": (
            "PATCH",
            {
                "title": ASTRAL * 200,
                "instructions": ASTRAL * MAX_INPUT,
                "metadata": _longest_metadata(),
            },
        ),
    }


def _largest_body_urls(session, thread) -> dict[str, str]:
    return {
        "create run": runs_path(thread),
        "create session": SESSIONS,
        "patch session": f"{SESSIONS}/{session.pk}",
    }


@pytest.mark.parametrize("target", ["create run", "create session", "patch session"])
def test_largest_legal_body_in_escaped_json_is_accepted(
    api, session, thread, openai_settings, target
):
    openai_settings.default = Reply(text="ok")
    method, body = _largest_bodies()[target]
    # As Python's json.dumps writes it by default: every emoji as \uXXXX\uXXXX.
    raw = json.dumps(body).encode()

    response = send_raw(api, method, _largest_body_urls(session, thread)[target], raw)

    assert response.status_code in (200, 201), response.content[:300]
    data = response.json()["data"]
    if target == "create run":
        assert data["status"] == "completed"
        assert data["input_message"]["content"] == body["input"]
        assert Run.objects.get(pk=data["id"]).instructions == body["instructions"]
    else:
        assert data["instructions"] == body["instructions"]
    assert data["metadata"] == body["metadata"]


@pytest.mark.parametrize("target", ["create run", "create session"])
def test_body_past_the_limit_is_413_even_when_its_content_is_legal(
    api, session, thread, openai_settings, target
):
    method, body = _largest_bodies()[target]
    raw = json.dumps(body).encode()
    # Legal JSON still: whitespace before the closing brace.
    padded = raw[:-1] + b" " * (settings.MAX_BODY_BYTES + 1 - len(raw)) + raw[-1:]
    assert len(padded) == settings.MAX_BODY_BYTES + 1
    before = snapshot()

    response = send_raw(api, method, _largest_body_urls(session, thread)[target], padded)

    assert_error(response, 413, "PAYLOAD_TOO_LARGE")
    assert snapshot() == before
    assert openai_settings.requests == []


# Many keys -----------------------------------------------------------------


def _many_keys(count: int) -> dict[str, str]:
    return {f"k{i:05d}": "v" for i in range(count)}


@pytest.mark.parametrize("target", ["create session", "patch thread", "create run"])
def test_metadata_with_10000_keys_is_400(api, session, thread, openai_settings, target):
    method, url, body = _write_targets(session, thread)[target]
    raw = json.dumps({**body, "metadata": _many_keys(10_000)}).encode()
    assert len(raw) < settings.MAX_BODY_BYTES
    before = snapshot()

    response = send_raw(api, method, url, raw)

    error = assert_error(response, 400, "VALIDATION_ERROR")
    assert list(error["details"]) == ["metadata"]
    assert len(response.content) < 2000, "the error does not echo the keys"
    assert snapshot() == before
    assert openai_settings.requests == []


def test_body_with_10000_unknown_top_level_keys_is_400(api, openai_settings, thread):
    raw = json.dumps({"input": "hi", **_many_keys(10_000)}).encode()
    before = snapshot()

    response = send_raw(api, "POST", runs_path(thread), raw)

    assert_error(response, 400, "VALIDATION_ERROR")
    assert snapshot() == before
    assert openai_settings.requests == []


def test_metadata_of_16_keys_at_their_longest_is_accepted(api):
    metadata = {f"{i:02d}".ljust(64, "k"): "v" * 512 for i in range(16)}

    response = api.post(SESSIONS, {"metadata": metadata}, format="json")

    assert response.status_code == 201, response.content
    assert response.json()["data"]["metadata"] == metadata
