"""OWASP API Security Top 10 (2023), as tests.

API1 broken object level authorization: a stranger walking every route with
ids gets the same 404 as for a missing object. API2 broken authentication:
forged, expired, misused and garbled tokens all get a 401 that does not say
why. API3 broken object property level authorization (mass assignment):
fields the client may not set are a 400 naming them. API5 broken function
level authorization: the admin is for staff only. API8 security
misconfiguration: no debug pages, security headers, ``check --deploy``.
"""

import base64
import json
import os
import secrets
import subprocess
import sys
import time
import uuid
import warnings
from datetime import timedelta
from pathlib import Path

import jwt
import jwt.warnings
import pytest
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.test import Client
from django.urls import include, path
from django.utils import timezone
from rest_framework.test import APIClient
from rest_framework_simplejwt.tokens import AccessToken, RefreshToken

from accounts.models import User
from chatkit import views
from conversations import runs
from conversations.models import Conversation, Message, Run, RunEvent, Thread
from tests.conftest import PASSWORD, make_user

SESSIONS = "/api/v1/chatkit/sessions"
ME = "/api/v1/auth/me"
PROJECT_DIR = Path(__file__).resolve().parent.parent


def envelope_error(response, status: int) -> dict:
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"success", "error"}
    assert body["success"] is False
    assert set(body["error"]) == {"code", "message", "details", "request_id"}
    assert body["error"]["request_id"] == response["X-Request-ID"]
    return body["error"]


def without_request_id(response) -> bytes:
    return response.content.replace(response["X-Request-ID"].encode(), b"<request-id>")


# API2: broken authentication ------------------------------------------------


def _b64(data: dict) -> str:
    raw = json.dumps(data, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _claims(user: User, **changes) -> dict:
    """The claims of a genuine access token for ``user``, with ``changes``."""
    claims = dict(AccessToken.for_user(user).payload)
    claims.update(changes)
    return claims


def _signed(claims: dict, key: str | None = None, algorithm: str = "HS256") -> str:
    with warnings.catch_warnings():
        # PyJWT warns that the test key is short for HS512; that is not the point here.
        warnings.simplefilter("ignore", jwt.warnings.InsecureKeyLengthWarning)
        return jwt.encode(claims, key or settings.SIMPLE_JWT["SIGNING_KEY"], algorithm=algorithm)


def _unsigned(claims: dict) -> str:
    return f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(claims)}."


def _deleted_users_token() -> str:
    ghost = make_user("ghost")
    token = str(AccessToken.for_user(ghost))
    ghost.delete()
    return token


def _inactive_users_token() -> str:
    sleeper = make_user("sleeper")
    sleeper.is_active = False
    sleeper.save()
    return str(AccessToken.for_user(sleeper))


# name -> a function of the owner that gives the Authorization header value
BAD_BEARERS = {
    "alg_none": lambda u: f"Bearer {_unsigned(_claims(u))}",
    "alg_none_capitalised": lambda u: (
        "Bearer " + f"{_b64({'alg': 'None', 'typ': 'JWT'})}.{_b64(_claims(u))}."
    ),
    "wrong_key": lambda u: f"Bearer {_signed(_claims(u), key='not-the-key-' * 4)}",
    "other_algorithm_same_key": lambda u: f"Bearer {_signed(_claims(u), algorithm='HS512')}",
    "expired": lambda u: (
        "Bearer " + _signed(_claims(u, exp=int(time.time()) - 60, iat=int(time.time()) - 3600))
    ),
    "refresh_as_access": lambda u: f"Bearer {RefreshToken.for_user(u)}",
    "no_token_type": lambda u: (
        "Bearer " + _signed({k: v for k, v in _claims(u).items() if k != "token_type"})
    ),
    "no_sub": lambda u: "Bearer " + _signed({k: v for k, v in _claims(u).items() if k != "sub"}),
    "deleted_user": lambda u: f"Bearer {_deleted_users_token()}",
    "inactive_user": lambda u: f"Bearer {_inactive_users_token()}",
    "tampered_payload": lambda u: (
        "Bearer "
        + ".".join(
            [
                str(AccessToken.for_user(u)).split(".")[0],
                _b64(_claims(u, sub=str(uuid.uuid4()))),
                str(AccessToken.for_user(u)).split(".")[2],
            ]
        )
    ),
    "bearer_only": lambda u: "Bearer",
    "bearer_two_values": lambda u: "Bearer a b",
    "bearer_garbage": lambda u: "Bearer not.a.jwt",
    "bearer_latin1": lambda u: "Bearer caf\xe9",
    "basic": lambda u: "Basic " + base64.b64encode(f"owner:{PASSWORD}".encode()).decode(),
    "lowercase_bearer": lambda u: f"bearer {AccessToken.for_user(u)}",
    "token_scheme": lambda u: f"Token {AccessToken.for_user(u)}",
    "empty": lambda u: "",
}
# Generic sentences only: nothing about signatures, expiry, users or token types.
GENERIC_MESSAGES = {
    "NOT_AUTHENTICATED": "Authentication credentials were not provided.",
    "AUTHENTICATION_FAILED": "The credentials are invalid, expired or revoked.",
}


@pytest.mark.parametrize("name", list(BAD_BEARERS))
def test_bad_credentials_are_401_without_saying_why(owner, name):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=BAD_BEARERS[name](owner))

    for response in (client.get(ME), client.get(SESSIONS), client.post(SESSIONS, {}, "json")):
        error = envelope_error(response, 401)
        assert error["code"] in GENERIC_MESSAGES
        assert error["message"] == GENERIC_MESSAGES[error["code"]]
        assert error["details"] is None
        assert response["WWW-Authenticate"].startswith("Bearer")
    assert not Conversation.objects.exists()


def test_every_failed_token_gets_the_same_answer(owner):
    """No oracle: a forged, an expired and a dead user's token look alike."""
    answers = set()
    for name in ("alg_none", "wrong_key", "expired", "refresh_as_access", "deleted_user"):
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=BAD_BEARERS[name](owner))
        response = client.get(SESSIONS)
        headers = tuple(sorted((k, v) for k, v in response.items() if k != "X-Request-ID"))
        answers.add((response.status_code, headers, without_request_id(response)))
    assert len(answers) == 1, answers


@pytest.mark.parametrize(
    "sub", ["not-a-uuid", "", "00000000-0000-0000-0000-00000000000g", ["x"], {"id": "x"}]
)
def test_token_with_a_sub_that_is_not_a_uuid_is_401(owner, sub):
    """A correctly signed token from a confused issuer (a key shared with another service)."""
    client = APIClient(raise_request_exception=False)
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {_signed(_claims(owner, sub=sub))}")

    error = envelope_error(client.get(SESSIONS), 401)

    assert error["code"] == "AUTHENTICATION_FAILED"


@pytest.mark.parametrize("sub", ["not-a-uuid", ""])
def test_refresh_token_with_a_sub_that_is_not_a_uuid_is_401(anon, owner, sub):
    claims = dict(RefreshToken.for_user(owner).payload)
    claims["sub"] = sub
    anon.raise_request_exception = False

    response = anon.post("/api/v1/auth/token/refresh", {"refresh": _signed(claims)}, format="json")

    assert envelope_error(response, 401)["code"] == "AUTHENTICATION_FAILED"


def _refresh_claims(user: User, **changes) -> dict:
    claims = dict(RefreshToken.for_user(user).payload)
    claims.update(changes)
    return claims


def _deleted_users_refresh_token() -> str:
    ghost = make_user("ghost-refresh")
    token = str(RefreshToken.for_user(ghost))
    ghost.delete()
    return token


BAD_REFRESH_TOKENS = {
    "alg_none": lambda u: _unsigned(_refresh_claims(u)),
    "wrong_key": lambda u: _signed(_refresh_claims(u), key="not-the-key-" * 4),
    "other_algorithm_same_key": lambda u: _signed(_refresh_claims(u), algorithm="HS512"),
    "expired": lambda u: _signed(_refresh_claims(u, exp=int(time.time()) - 60)),
    "access_as_refresh": lambda u: str(AccessToken.for_user(u)),
    "garbage": lambda u: "not.a.jwt",
}


@pytest.mark.parametrize("endpoint", ["token/refresh", "logout"])
@pytest.mark.parametrize("name", list(BAD_REFRESH_TOKENS))
def test_forged_or_misused_refresh_tokens_are_401(anon, owner, endpoint, name):
    token = BAD_REFRESH_TOKENS[name](owner)

    response = anon.post(f"/api/v1/auth/{endpoint}", {"refresh": token}, format="json")

    error = envelope_error(response, 401)
    assert error["message"] == GENERIC_MESSAGES["AUTHENTICATION_FAILED"]
    assert error["details"] is None


def test_refresh_token_of_a_deleted_user_mints_nothing(anon, owner):
    token = _deleted_users_refresh_token()

    response = anon.post("/api/v1/auth/token/refresh", {"refresh": token}, format="json")

    assert envelope_error(response, 401)["message"] == GENERIC_MESSAGES["AUTHENTICATION_FAILED"]


def test_the_genuine_token_still_works(api, owner):
    # The control for the cases above: the helpers do build valid tokens.
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {_signed(_claims(owner))}")
    assert client.get(ME).status_code == 200
    assert api.get(ME).json()["data"]["id"] == str(owner.pk)


def test_logged_out_refresh_token_cannot_mint_access(anon, owner):
    pair = anon.post(
        "/api/v1/auth/token", {"username": "owner", "password": PASSWORD}, format="json"
    ).json()["data"]
    logout = anon.post("/api/v1/auth/logout", {"refresh": pair["refresh"]}, format="json")
    assert logout.status_code == 200

    response = anon.post("/api/v1/auth/token/refresh", {"refresh": pair["refresh"]}, format="json")

    error = envelope_error(response, 401)
    assert error["message"] == GENERIC_MESSAGES["AUTHENTICATION_FAILED"]


# API1: broken object level authorization ------------------------------------


@pytest.fixture
def world(owner, stranger) -> dict:
    """Two users' objects: the owner's are the targets; the stranger has two of each."""

    def make(user, title: str):
        session = Conversation.objects.create(user=user, title=title)
        thread = Thread.objects.create(conversation=session, title=title)
        run = runs.run_start(thread=thread, input=f"{title} input", provider="echo", model="m")
        return session, thread, run

    owners = make(owner, "Owner's secret")
    theirs = make(stranger, "Stranger A")
    theirs_b = make(stranger, "Stranger B")
    # The owner's run stays active (a cancel that got through would end it);
    # the stranger's end, so their own runs are no 409 in the way.
    for _, _, run in (theirs, theirs_b):
        runs.run_cancel(run_id=run.pk)
    return {"owner": owners, "stranger": theirs, "stranger_b": theirs_b}


# (method, path template under SESSIONS, body); {s} session, {t} thread, {r} run
ID_ROUTES = [
    ("get", "/{s}", None),
    ("patch", "/{s}", {"title": "pwned"}),
    ("delete", "/{s}", None),
    ("get", "/{s}/threads", None),
    ("post", "/{s}/threads", {"title": "pwned"}),
    ("get", "/{s}/threads/{t}", None),
    ("patch", "/{s}/threads/{t}", {"title": "pwned"}),
    ("delete", "/{s}/threads/{t}", None),
    ("get", "/{s}/threads/{t}/messages", None),
    ("get", "/{s}/threads/{t}/runs", None),
    ("post", "/{s}/threads/{t}/runs", {"input": "pwned"}),
    ("get", "/{s}/threads/{t}/runs/{r}", None),
    ("post", "/{s}/threads/{t}/runs/{r}/cancel", None),
    ("get", "/{s}/threads/{t}/runs/{r}/events", None),
    ("post", "/{s}/chatkit", {"type": "threads.list", "params": {}}),
    ("post", "/{s}/chatkit", {"type": "threads.get_by_id", "params": {"thread_id": "{t}"}}),
    ("post", "/{s}/chatkit", {"type": "items.list", "params": {"thread_id": "{t}"}}),
    (
        "post",
        "/{s}/chatkit",
        {"type": "threads.update", "params": {"thread_id": "{t}", "title": "pwned"}},
    ),
    ("post", "/{s}/chatkit", {"type": "threads.delete", "params": {"thread_id": "{t}"}}),
]
MISSING = str(uuid.uuid4())
MALFORMED = "not-a-uuid"


def _probes(world: dict) -> list[tuple[str, str, tuple]]:
    """(name, the placeholder that is wrong, (s, t, r))."""
    os_, ot, or_ = world["owner"]
    ss, st, sr = world["stranger"]
    bs, _, br = world["stranger_b"]
    return [
        ("foreign session and children", "s", (os_.pk, ot.pk, or_.pk)),
        ("foreign session, own children", "s", (os_.pk, st.pk, sr.pk)),
        ("missing session", "s", (MISSING, st.pk, sr.pk)),
        ("malformed session", "s", (MALFORMED, st.pk, sr.pk)),
        ("foreign thread in own session", "t", (ss.pk, ot.pk, or_.pk)),
        ("own thread under own other session", "t", (bs.pk, st.pk, sr.pk)),
        ("missing thread", "t", (ss.pk, MISSING, sr.pk)),
        ("malformed thread", "t", (ss.pk, MALFORMED, sr.pk)),
        ("foreign run in own thread", "r", (ss.pk, st.pk, or_.pk)),
        ("own run under own other thread", "r", (ss.pk, st.pk, br.pk)),
        ("missing run", "r", (ss.pk, st.pk, MISSING)),
        ("malformed run", "r", (ss.pk, st.pk, MALFORMED)),
    ]


def _snapshot() -> tuple:
    return tuple(
        list(model.objects.order_by("pk").values())
        for model in (Conversation, Thread, Message, Run, RunEvent)
    )


def _call(client, method: str, url: str, body):
    if body is None:
        return getattr(client, method)(url)
    return getattr(client, method)(url, body, format="json")


def _comparable(response) -> tuple:
    if getattr(response, "streaming", False):
        # A stream would follow the owner's active run: do not read it.
        response.close()
        return (response.status_code, "a stream", b"")
    headers = tuple(sorted((k, v) for k, v in response.items() if k != "X-Request-ID"))
    return response.status_code, headers, without_request_id(response)


@pytest.mark.parametrize(
    ("method", "template", "body"),
    ID_ROUTES,
    ids=[
        f"{method.upper()} {template}" + (f" {body['type']}" if "/chatkit" in template else "")
        for method, template, body in ID_ROUTES
    ],
)
def test_stranger_walking_every_route_gets_identical_404s(
    stranger_api, world, method, template, body
):
    before = _snapshot()
    answers = {}
    for name, wrong, (s, t, r) in _probes(world):
        # The ChatKit endpoint takes its thread id in the body.
        where = template + json.dumps(body)
        if "{" + wrong + "}" not in where:
            continue
        url = SESSIONS + template.format(s=s, t=t, r=r)
        sent = None if body is None else json.loads(json.dumps(body).replace("{t}", str(t)))
        answers[name] = _comparable(_call(stranger_api, method, url, sent))

    assert answers
    for name, answer in answers.items():
        assert answer[0] == 404, (name, answer)
    reference = _comparable(stranger_api.get(f"{SESSIONS}/{MISSING}"))
    assert {answer[2] for answer in answers.values()} == {reference[2]}, answers
    assert len(set(answers.values())) == 1, answers
    assert b'"code":"NOT_FOUND"' in reference[2]
    assert _snapshot() == before


def test_stranger_filtering_own_messages_by_a_foreign_run_sees_nothing(stranger_api, world):
    ss, st, _ = world["stranger"]
    _, _, owners_run = world["owner"]

    response = stranger_api.get(
        f"{SESSIONS}/{ss.pk}/threads/{st.pk}/messages", {"run_id": str(owners_run.pk)}
    )

    assert response.status_code == 200
    assert response.json()["data"] == []
    assert b"secret" not in response.content


def test_the_owner_still_reaches_everything(api, world):
    # The control: the paths the stranger was refused are real.
    s, t, r = world["owner"]
    assert api.get(f"{SESSIONS}/{s.pk}/threads/{t.pk}/runs/{r.pk}").status_code == 200
    assert api.get(f"{SESSIONS}/{s.pk}/threads/{t.pk}/messages").json()["data"]
    assert api.post(f"{SESSIONS}/{s.pk}/threads/{t.pk}/runs/{r.pk}/cancel").status_code == 200


# API3: mass assignment ------------------------------------------------------

PROTECTED_FIELDS = [
    "user_id",
    "id",
    "status",
    "created_at",
    "session_id",
    "thread_id",
    "role",
    "output_message",
]
TARGETS = ["create session", "patch session", "create thread", "patch thread", "create run"]


@pytest.fixture
def own(owner, stranger) -> dict:
    session = Conversation.objects.create(user=owner, title="Mine")
    thread = Thread.objects.create(conversation=session, title="Mine")
    other_session = Conversation.objects.create(user=stranger, title="Theirs")
    other_thread = Thread.objects.create(conversation=other_session, title="Theirs")
    base = f"{SESSIONS}/{session.pk}"
    return {
        "values": {
            "user_id": str(stranger.pk),
            "id": str(uuid.uuid4()),
            "status": "completed",
            "created_at": "2020-01-01T00:00:00Z",
            "session_id": str(other_session.pk),
            "thread_id": str(other_thread.pk),
            "role": "assistant",
            "output_message": {"role": "assistant", "content": "planted"},
        },
        "create session": ("post", SESSIONS, {}),
        "patch session": ("patch", base, {"title": "Renamed"}),
        "create thread": ("post", f"{base}/threads", {}),
        "patch thread": ("patch", f"{base}/threads/{thread.pk}", {"title": "Renamed"}),
        "create run": ("post", f"{base}/threads/{thread.pk}/runs", {"input": "hello"}),
    }


@pytest.mark.parametrize("field", PROTECTED_FIELDS)
@pytest.mark.parametrize("target", TARGETS)
def test_fields_the_client_may_not_set_are_400_naming_them(api, own, target, field):
    method, url, body = own[target]
    before = _snapshot()

    response = _call(api, method, url, {**body, field: own["values"][field]})

    error = envelope_error(response, 400)
    assert error["code"] == "VALIDATION_ERROR"
    assert field in error["details"], error
    assert _snapshot() == before


@pytest.mark.parametrize("target", TARGETS)
def test_a_null_protected_field_is_still_refused(api, own, target):
    method, url, body = own[target]
    before = _snapshot()

    response = _call(api, method, url, {**body, "user_id": None, "status": None})

    error = envelope_error(response, 400)
    assert {"user_id", "status"} <= set(error["details"])
    assert _snapshot() == before


@pytest.mark.parametrize("field", ["provider", "model", "usage", "error", "input_message"])
def test_run_fields_of_the_server_are_refused(api, own, field):
    method, url, body = own["create run"]
    before = _snapshot()

    response = _call(api, method, url, {**body, field: "forged"})

    assert field in envelope_error(response, 400)["details"]
    assert _snapshot() == before


def test_register_cannot_make_a_staff_user(db, anon):
    for field, value in (("is_staff", True), ("is_superuser", True), ("id", str(uuid.uuid4()))):
        response = anon.post(
            "/api/v1/auth/register",
            {"username": f"climber-{field}", "password": PASSWORD, field: value},
            format="json",
        )
        assert field in envelope_error(response, 400)["details"]
    assert not User.objects.filter(username__startswith="climber").exists()


# API5: broken function level authorization (the admin) --------------------


@pytest.fixture
def admin_data(owner) -> dict:
    session = Conversation.objects.create(user=owner, title="Admin view")
    thread = Thread.objects.create(conversation=session, title="Admin thread")
    run = runs.run_start(thread=thread, input="look at me", provider="echo", model="m")
    return {"session": session, "thread": thread, "run": run}


CHANGELISTS = {
    "sessions": "/admin/conversations/conversation/",
    "threads": "/admin/conversations/thread/",
    "runs": "/admin/conversations/run/",
    "users": "/admin/accounts/user/",
}


def _staff_only_urls(data: dict, owner) -> list[str]:
    return [
        "/admin/",
        *CHANGELISTS.values(),
        f"/admin/conversations/conversation/{data['session'].pk}/change/",
        f"/admin/conversations/run/{data['run'].pk}/change/",
        f"/admin/accounts/user/{owner.pk}/change/",
        "/admin/accounts/user/add/",
        "/admin/password_change/",
    ]


def test_normal_user_is_sent_to_the_login_page(plain_static, owner, admin_data):
    client = Client()
    client.force_login(owner)

    for url in _staff_only_urls(admin_data, owner):
        response = client.get(url)
        assert response.status_code == 302, url
        assert response["Location"].startswith("/admin/login/"), (url, response["Location"])


def test_normal_user_with_a_bearer_token_gets_no_admin(plain_static, owner, admin_data):
    client = Client(HTTP_AUTHORIZATION=f"Bearer {AccessToken.for_user(owner)}")

    for url in _staff_only_urls(admin_data, owner):
        response = client.get(url)
        assert response.status_code == 302, url
        assert response["Location"].startswith("/admin/login/")


def test_normal_user_cannot_post_admin_actions_or_promote_themselves(
    plain_static, owner, admin_data
):
    client = Client()
    client.force_login(owner)
    run = admin_data["run"]
    Run.objects.filter(pk=run.pk).update(heartbeat_at=timezone.now() - timedelta(days=1))

    expire = client.post(
        CHANGELISTS["runs"], {"action": "expire_stale", "_selected_action": [str(run.pk)]}
    )
    promote = client.post(
        f"/admin/accounts/user/{owner.pk}/change/",
        {"username": "owner", "is_staff": "on", "is_superuser": "on", "is_active": "on"},
    )
    delete = client.post(
        f"/admin/conversations/conversation/{admin_data['session'].pk}/delete/", {"post": "yes"}
    )

    assert [r.status_code for r in (expire, promote, delete)] == [302, 302, 302]
    run.refresh_from_db()
    assert run.status == "in_progress"
    owner.refresh_from_db()
    assert (owner.is_staff, owner.is_superuser) == (False, False)
    assert Conversation.objects.filter(pk=admin_data["session"].pk).exists()


def test_admin_login_with_a_normal_users_password_is_refused(plain_static, owner):
    client = Client()
    response = client.post(
        "/admin/login/?next=/admin/", {"username": "owner", "password": PASSWORD}
    )

    assert response.status_code == 200  # the form again, with an error
    assert client.get("/admin/").status_code == 302


def test_staff_without_permissions_gets_403_on_changelists(plain_static, admin_data):
    clerk = make_user("clerk")
    clerk.is_staff = True
    clerk.save()
    client = Client()
    client.force_login(clerk)

    assert client.get("/admin/").status_code == 200
    for url in CHANGELISTS.values():
        assert client.get(url).status_code == 403, url


@pytest.fixture
def superuser_client(db, plain_static) -> Client:
    boss = User.objects.create_superuser(username="boss", password=PASSWORD, email="b@x.test")
    client = Client()
    client.force_login(boss)
    return client


@pytest.mark.parametrize("name", list(CHANGELISTS))
def test_superuser_opens_the_changelists(superuser_client, admin_data, name):
    response = superuser_client.get(CHANGELISTS[name])

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/html")


def test_superuser_opens_the_change_pages_and_searches(superuser_client, admin_data, owner):
    data = admin_data
    for url in (
        f"/admin/conversations/conversation/{data['session'].pk}/change/",
        f"/admin/conversations/thread/{data['thread'].pk}/change/",
        f"/admin/conversations/run/{data['run'].pk}/change/",
        f"/admin/accounts/user/{owner.pk}/change/",
        f"{CHANGELISTS['sessions']}?q=owner",
        f"{CHANGELISTS['sessions']}?q={data['session'].pk}",
        f"{CHANGELISTS['runs']}?q={data['run'].pk}",
        f"{CHANGELISTS['runs']}?status__exact=in_progress",
    ):
        assert superuser_client.get(url).status_code == 200, url


def test_run_admin_expire_stale_action(superuser_client, admin_data, owner):
    stale = admin_data["run"]
    Run.objects.filter(pk=stale.pk).update(
        heartbeat_at=timezone.now() - timedelta(seconds=settings.RUN_TIMEOUT_SECONDS + 60)
    )
    other = Thread.objects.create(conversation=admin_data["session"])
    fresh = runs.run_start(thread=other, input="still going", provider="echo", model="m")

    response = superuser_client.post(
        CHANGELISTS["runs"],
        {"action": "expire_stale", "_selected_action": [str(stale.pk), str(fresh.pk)]},
        follow=True,
    )

    assert response.status_code == 200
    assert "Expired 1 stale run(s)" in response.content.decode()
    stale.refresh_from_db()
    fresh.refresh_from_db()
    assert stale.status == "expired"
    assert stale.error_code == "RUN_EXPIRED"
    assert fresh.status == "in_progress"


# API8: security misconfiguration --------------------------------------------

LEAKS = ("Traceback", "SECRET_KEY", "settings.py", "/work/", ".py", "DEBUG", "Exception")


def _assert_nothing_leaks(response) -> None:
    text = response.content.decode(errors="replace")
    for leak in LEAKS:
        assert leak not in text, leak
    assert settings.SECRET_KEY not in text


def _boom(request: HttpRequest) -> HttpResponse:
    raise RuntimeError(f"boom at {settings.SECRET_KEY} in /work/main/settings.py")


# This module is also a URLconf (for @pytest.mark.urls): the project's routes,
# plus a plain Django view under /api/ that fails outside DRF.
urlpatterns = [path("api/v1/boom", _boom), path("", include("chatbot_project.urls"))]
handler400 = "chatkit.exceptions.bad_request"
handler403 = "chatkit.exceptions.permission_denied"
handler404 = "chatkit.exceptions.page_not_found"
handler500 = "chatkit.exceptions.server_error"


def test_debug_is_off_in_tests():
    assert settings.DEBUG is False


@pytest.mark.parametrize("url", ["/api/v1/nothing-here", "/api/v1/chatkit/sessions/x/y/z/w/v"])
def test_api_404_is_the_envelope(api, url):
    response = api.get(url)

    assert envelope_error(response, 404)["code"] == "NOT_FOUND"
    _assert_nothing_leaks(response)


def test_404_outside_the_api_shows_no_url_patterns(db):
    response = Client().get("/no/such/page")

    assert response.status_code == 404
    _assert_nothing_leaks(response)
    assert b"URLconf" not in response.content
    assert b"admin/" not in response.content


def test_500_in_an_api_view_is_the_envelope(api, monkeypatch):
    def fail(self, request, *args, **kwargs):
        raise RuntimeError(f"boom at {settings.SECRET_KEY} in /work/main/settings.py")

    monkeypatch.setattr(views.SessionViewSet, "list", fail)
    api.raise_request_exception = False

    response = api.get(SESSIONS)

    error = envelope_error(response, 500)
    assert error["code"] == "INTERNAL_ERROR"
    assert error["details"] is None
    _assert_nothing_leaks(response)


@pytest.mark.urls("tests.test_security")
def test_500_outside_drf_under_api_is_the_envelope(db):
    client = Client(raise_request_exception=False)

    response = client.get("/api/v1/boom")

    error = envelope_error(response, 500)
    assert error["code"] == "INTERNAL_ERROR"
    _assert_nothing_leaks(response)


def test_disallowed_host_is_a_400_envelope_without_settings(db):
    response = Client(raise_request_exception=False).get(SESSIONS, HTTP_HOST="evil.example")

    assert envelope_error(response, 400)["code"] == "MALFORMED_REQUEST"
    _assert_nothing_leaks(response)
    assert b"ALLOWED_HOSTS" not in response.content


def _security_headers_cases(api, owner) -> dict:
    anon = APIClient()
    return {
        "api 200": api.get(SESSIONS),
        "api 201": api.post(SESSIONS, {}, format="json"),
        "api 400": api.post(SESSIONS, {"title": 5}, format="json"),
        "api 401": anon.get(SESSIONS),
        "api 404": api.get(f"{SESSIONS}/{uuid.uuid4()}"),
        "api 405": api.put(SESSIONS, {}, format="json"),
        "unknown api route": api.get("/api/v1/nope"),
        "413 body too large": api.generic(
            "POST",
            SESSIONS,
            b"{}",
            content_type="application/json",
            CONTENT_LENGTH=str(settings.MAX_BODY_BYTES + 1),
        ),
        "400 bad content length": api.generic(
            "POST", SESSIONS, b"{}", content_type="application/json", CONTENT_LENGTH="abc"
        ),
        "healthz": anon.get("/healthz"),
        "readyz": anon.get("/readyz"),
        "schema": anon.get("/api/schema/"),
    }


def test_responses_carry_nosniff_and_frame_options(api, owner):
    missing = {}
    for name, response in _security_headers_cases(api, owner).items():
        absent = [
            header
            for header, expected in (
                ("X-Content-Type-Options", "nosniff"),
                ("X-Frame-Options", "DENY"),
            )
            if response.get(header) != expected
        ]
        if absent:
            missing[f"{name} ({response.status_code})"] = absent
    assert not missing, missing


def test_admin_login_page_carries_the_security_headers(plain_static, db):
    response = Client().get("/admin/login/")

    assert response.status_code == 200
    assert response["X-Frame-Options"] == "DENY"
    assert response["X-Content-Type-Options"] == "nosniff"


def test_check_deploy_reports_no_issues_with_production_settings(tmp_path):
    env = {
        key: value
        for key, value in os.environ.items()
        if key in {"PATH", "HOME", "LANG", "LC_ALL", "SYSTEMROOT", "TMPDIR"}
    }
    env.update(
        SECRET_KEY=secrets.token_urlsafe(64),
        DEBUG="0",
        SECURE_HSTS_SECONDS="31536000",
        SECURE_SSL_REDIRECT="1",
        ALLOWED_HOSTS="chat.example.com",
        DATABASE_URL=f"sqlite:///{tmp_path / 'deploy-check.sqlite3'}",
        PYTHONDONTWRITEBYTECODE="1",
    )

    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=PROJECT_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )

    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "System check identified no issues" in output, output
