"""Registration, tokens, rotation, logout and the current user."""

import base64
import json
import uuid
from datetime import timedelta

import pytest
from django.conf import settings
from django.test import override_settings
from rest_framework_simplejwt.tokens import AccessToken, RefreshToken

from accounts.checks import check_token_blacklist
from accounts.models import User
from tests.conftest import PASSWORD, client_for, make_user

REGISTER = "/api/v1/auth/register"
TOKEN = "/api/v1/auth/token"
REFRESH = "/api/v1/auth/token/refresh"
LOGOUT = "/api/v1/auth/logout"
ME = "/api/v1/auth/me"

USER_FIELDS = {"id", "username", "email", "date_joined"}


def error_code(response) -> str:
    return response.json()["error"]["code"]


def obtain_pair(client, username: str = "owner", password: str = PASSWORD) -> dict:
    response = client.post(TOKEN, {"username": username, "password": password}, format="json")
    assert response.status_code == 200, response.content
    return response.json()["data"]


# Register


@pytest.mark.django_db
def test_register_returns_the_new_user(anon):
    response = anon.post(
        REGISTER,
        {"username": "alice", "password": PASSWORD, "email": "alice@example.com"},
        format="json",
    )

    assert response.status_code == 201
    body = response.json()
    assert body["success"] is True
    assert set(body["data"]) == USER_FIELDS
    user = User.objects.get(username="alice")
    assert body["data"]["id"] == str(user.pk)
    assert body["data"]["email"] == "alice@example.com"
    assert body["data"]["date_joined"].endswith("Z")
    assert user.check_password(PASSWORD)


@pytest.mark.django_db
def test_register_without_email(anon):
    response = anon.post(REGISTER, {"username": "bob", "password": PASSWORD}, format="json")

    assert response.status_code == 201
    assert response.json()["data"]["email"] == ""


@pytest.mark.django_db
def test_registered_user_can_log_in(anon):
    anon.post(REGISTER, {"username": "carol", "password": PASSWORD}, format="json")

    pair = obtain_pair(anon, "carol")

    assert AccessToken(pair["access"])["sub"] == str(User.objects.get(username="carol").pk)


@pytest.mark.django_db
@pytest.mark.parametrize("password", ["abc", "password", "83749218374619", "dave-the-user"])
def test_register_rejects_weak_password(anon, password):
    response = anon.post(
        REGISTER, {"username": "dave-the-user", "password": password}, format="json"
    )

    assert response.status_code == 400
    assert error_code(response) == "VALIDATION_ERROR"
    assert "password" in response.json()["error"]["details"]
    assert not User.objects.filter(username="dave-the-user").exists()


@pytest.mark.django_db
def test_register_duplicate_username_is_400(anon, owner):
    response = anon.post(REGISTER, {"username": "owner", "password": PASSWORD}, format="json")

    assert response.status_code == 400
    assert error_code(response) == "VALIDATION_ERROR"
    assert "username" in response.json()["error"]["details"]
    assert User.objects.filter(username="owner").count() == 1


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("field", "value"),
    [("is_staff", True), ("is_superuser", True), ("id", str(uuid.uuid4())), ("date_joined", "x")],
)
def test_register_rejects_fields_the_client_may_not_set(anon, field, value):
    response = anon.post(
        REGISTER, {"username": "eve", "password": PASSWORD, field: value}, format="json"
    )

    assert response.status_code == 400
    assert error_code(response) == "VALIDATION_ERROR"
    assert field in response.json()["error"]["details"]
    assert not User.objects.filter(username="eve").exists()


@pytest.mark.django_db
def test_register_rejects_non_string_username(anon):
    response = anon.post(REGISTER, {"username": 12345, "password": PASSWORD}, format="json")

    assert response.status_code == 400
    assert "username" in response.json()["error"]["details"]
    assert User.objects.count() == 0


@pytest.mark.django_db
def test_register_when_closed_is_403(anon, settings):
    settings.REGISTRATION_OPEN = False

    response = anon.post(REGISTER, {"username": "frank", "password": PASSWORD}, format="json")

    assert response.status_code == 403
    assert error_code(response) == "PERMISSION_DENIED"
    assert not User.objects.filter(username="frank").exists()


# Token


@pytest.mark.django_db
def test_token_returns_access_and_refresh(anon, owner):
    pair = obtain_pair(anon)

    assert set(pair) == {"access", "refresh"}
    assert RefreshToken(pair["refresh"])["sub"] == str(owner.pk)


@pytest.mark.django_db
def test_access_token_sub_is_the_user_uuid(anon, owner):
    pair = obtain_pair(anon)

    sub = AccessToken(pair["access"])["sub"]

    assert sub == str(owner.pk)
    assert uuid.UUID(sub) == owner.pk


@pytest.mark.django_db
def test_login_ignores_a_stale_authorization_header(anon, owner):
    anon.credentials(HTTP_AUTHORIZATION="Bearer expired-or-garbage")

    pair = obtain_pair(anon)

    assert AccessToken(pair["access"])["sub"] == str(owner.pk)


@pytest.mark.django_db
def test_wrong_password_is_401(anon, owner):
    response = anon.post(TOKEN, {"username": "owner", "password": "wrong"}, format="json")

    assert response.status_code == 401
    assert error_code(response) == "AUTHENTICATION_FAILED"
    assert "access" not in response.content.decode()


@pytest.mark.django_db
def test_unknown_user_and_wrong_password_look_the_same(anon, owner):
    headers = {"HTTP_X_REQUEST_ID": "login-probe"}
    wrong_password = anon.post(
        TOKEN, {"username": "owner", "password": "wrong"}, format="json", **headers
    )
    unknown_user = anon.post(
        TOKEN, {"username": "nobody", "password": "wrong"}, format="json", **headers
    )

    assert wrong_password.status_code == unknown_user.status_code == 401
    assert wrong_password.content == unknown_user.content


@pytest.mark.django_db
def test_token_for_inactive_user_is_401(anon, owner):
    owner.is_active = False
    owner.save()

    response = anon.post(TOKEN, {"username": "owner", "password": PASSWORD}, format="json")

    assert response.status_code == 401
    assert error_code(response) == "AUTHENTICATION_FAILED"


@pytest.mark.django_db
def test_token_rejects_unknown_field(anon, owner):
    response = anon.post(
        TOKEN, {"username": "owner", "password": PASSWORD, "scope": "admin"}, format="json"
    )

    assert response.status_code == 400
    assert "scope" in response.json()["error"]["details"]


@pytest.mark.django_db
@pytest.mark.parametrize("endpoint", [TOKEN, REGISTER])
@pytest.mark.parametrize("field", ["username", "password"])
def test_nul_in_credentials_is_400(anon, owner, endpoint, field):
    body = {"username": "owner", "password": PASSWORD, field: "own\x00er"}

    response = anon.post(endpoint, body, format="json")

    assert response.status_code == 400
    assert error_code(response) == "VALIDATION_ERROR"
    assert field in response.json()["error"]["details"]
    assert User.objects.count() == 1


# Refresh and logout


@pytest.mark.django_db
def test_refresh_rotates_and_old_refresh_stops_working(anon, owner):
    pair = obtain_pair(anon)

    rotated = anon.post(REFRESH, {"refresh": pair["refresh"]}, format="json")
    assert rotated.status_code == 200
    new_pair = rotated.json()["data"]
    assert set(new_pair) == {"access", "refresh"}
    assert new_pair["refresh"] != pair["refresh"]
    assert AccessToken(new_pair["access"])["sub"] == str(owner.pk)

    replay = anon.post(REFRESH, {"refresh": pair["refresh"]}, format="json")
    assert replay.status_code == 401
    assert error_code(replay) == "AUTHENTICATION_FAILED"

    again = anon.post(REFRESH, {"refresh": new_pair["refresh"]}, format="json")
    assert again.status_code == 200


@pytest.mark.django_db
def test_refreshed_access_token_authenticates(anon, owner):
    pair = obtain_pair(anon)
    access = anon.post(REFRESH, {"refresh": pair["refresh"]}, format="json").json()["data"][
        "access"
    ]

    anon.credentials(HTTP_AUTHORIZATION=f"Bearer {access}")
    response = anon.get(ME)

    assert response.status_code == 200
    assert response.json()["data"]["id"] == str(owner.pk)


@pytest.mark.django_db
def test_access_token_is_not_a_refresh_token(anon, owner):
    pair = obtain_pair(anon)

    response = anon.post(REFRESH, {"refresh": pair["access"]}, format="json")

    assert response.status_code == 401
    assert error_code(response) == "AUTHENTICATION_FAILED"


@pytest.mark.django_db
def test_garbage_refresh_is_401(anon):
    response = anon.post(REFRESH, {"refresh": "not-a-token"}, format="json")

    assert response.status_code == 401
    assert error_code(response) == "AUTHENTICATION_FAILED"


@pytest.mark.django_db
def test_logout_revokes_refresh_token(anon, owner):
    pair = obtain_pair(anon)

    response = anon.post(LOGOUT, {"refresh": pair["refresh"]}, format="json")
    assert response.status_code == 200
    assert response.json()["data"] == {"revoked": True}

    refresh = anon.post(REFRESH, {"refresh": pair["refresh"]}, format="json")
    assert refresh.status_code == 401
    assert error_code(refresh) == "AUTHENTICATION_FAILED"

    again = anon.post(LOGOUT, {"refresh": pair["refresh"]}, format="json")
    assert again.status_code == 401


@pytest.mark.django_db
def test_logout_leaves_other_refresh_tokens_alone(anon, owner):
    first = obtain_pair(anon)
    second = obtain_pair(anon)

    anon.post(LOGOUT, {"refresh": first["refresh"]}, format="json")

    assert anon.post(REFRESH, {"refresh": second["refresh"]}, format="json").status_code == 200


@pytest.mark.django_db
@pytest.mark.parametrize("token", ["garbage", "a.b.c"])
def test_logout_with_invalid_token_is_401(anon, token):
    response = anon.post(LOGOUT, {"refresh": token}, format="json")

    assert response.status_code == 401
    assert error_code(response) == "AUTHENTICATION_FAILED"


@pytest.mark.django_db
def test_logout_with_access_token_is_401(anon, owner):
    pair = obtain_pair(anon)

    response = anon.post(LOGOUT, {"refresh": pair["access"]}, format="json")

    assert response.status_code == 401


@pytest.mark.django_db
def test_logout_without_refresh_is_400(anon):
    response = anon.post(LOGOUT, {}, format="json")

    assert response.status_code == 400
    assert "refresh" in response.json()["error"]["details"]


@pytest.mark.django_db
def test_refresh_for_deleted_user_is_401(anon):
    user = make_user("doomed")
    refresh = str(RefreshToken.for_user(user))
    user.delete()

    response = anon.post(REFRESH, {"refresh": refresh}, format="json")

    assert response.status_code == 401
    assert error_code(response) == "AUTHENTICATION_FAILED"


@pytest.mark.django_db
def test_refresh_for_inactive_user_is_401(anon, owner):
    refresh = str(RefreshToken.for_user(owner))
    owner.is_active = False
    owner.save()

    response = anon.post(REFRESH, {"refresh": refresh}, format="json")

    assert response.status_code == 401


# Me and bearer authentication


@pytest.mark.django_db
def test_me_returns_the_user(api, owner):
    response = api.get(ME)

    assert response.status_code == 200
    data = response.json()["data"]
    assert set(data) == USER_FIELDS
    assert data["id"] == str(owner.pk)
    assert data["username"] == "owner"


def test_no_credentials_is_401_with_bearer_challenge(anon):
    response = anon.get(ME)

    assert response.status_code == 401
    assert error_code(response) == "NOT_AUTHENTICATED"
    assert response["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.django_db
@pytest.mark.parametrize(
    "authorization", ["Bearer garbage", "Bearer a.b.c", "Bearer " + "x" * 2000]
)
def test_bad_bearer_token_is_401(anon, authorization):
    anon.credentials(HTTP_AUTHORIZATION=authorization)

    response = anon.get(ME)

    assert response.status_code == 401
    assert error_code(response) == "AUTHENTICATION_FAILED"
    assert response["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.django_db
def test_token_signed_with_another_key_is_401(anon, owner):
    token = AccessToken.for_user(owner)
    forged = token.token_backend.__class__(
        token.token_backend.algorithm, signing_key="another-key-entirely-0123456789abcdef"
    ).encode(token.payload)
    anon.credentials(HTTP_AUTHORIZATION=f"Bearer {forged}")

    response = anon.get(ME)

    assert response.status_code == 401
    assert error_code(response) == "AUTHENTICATION_FAILED"


@pytest.mark.django_db
def test_expired_access_token_is_401(anon, owner):
    token = AccessToken.for_user(owner)
    token.set_exp(lifetime=-timedelta(seconds=1))
    anon.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")

    response = anon.get(ME)

    assert response.status_code == 401
    assert error_code(response) == "AUTHENTICATION_FAILED"


@pytest.mark.django_db
def test_expired_refresh_token_is_401(anon, owner):
    token = RefreshToken.for_user(owner)
    token.set_exp(lifetime=-timedelta(seconds=1))

    response = anon.post(REFRESH, {"refresh": str(token)}, format="json")

    assert response.status_code == 401
    assert error_code(response) == "AUTHENTICATION_FAILED"


@pytest.mark.django_db
def test_unsigned_token_is_401(anon, owner):
    def part(data: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    payload = AccessToken.for_user(owner).payload
    unsigned = f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(payload)}."
    anon.credentials(HTTP_AUTHORIZATION=f"Bearer {unsigned}")

    response = anon.get(ME)

    assert response.status_code == 401
    assert error_code(response) == "AUTHENTICATION_FAILED"


@pytest.mark.django_db
def test_refresh_token_as_bearer_is_401(anon, owner):
    anon.credentials(HTTP_AUTHORIZATION=f"Bearer {RefreshToken.for_user(owner)}")

    response = anon.get(ME)

    assert response.status_code == 401


@pytest.mark.django_db
def test_access_token_of_deleted_user_is_401(owner):
    client = client_for(owner)
    owner.delete()

    response = client.get(ME)

    assert response.status_code == 401
    assert error_code(response) == "AUTHENTICATION_FAILED"


# System checks


def test_checks_pass_with_the_project_settings():
    assert check_token_blacklist(None) == []


def test_check_fires_without_the_blacklist_app():
    apps = [a for a in settings.INSTALLED_APPS if a != "rest_framework_simplejwt.token_blacklist"]
    with override_settings(INSTALLED_APPS=apps):
        errors = check_token_blacklist(None)

    assert [e.id for e in errors] == ["accounts.E001"]


@pytest.mark.parametrize("setting", ["ROTATE_REFRESH_TOKENS", "BLACKLIST_AFTER_ROTATION"])
def test_check_fires_without_rotation_and_blacklisting(setting):
    with override_settings(SIMPLE_JWT={**settings.SIMPLE_JWT, setting: False}):
        errors = check_token_blacklist(None)

    assert [e.id for e in errors] == ["accounts.E002"]


def test_check_fires_when_sub_is_not_the_user_id():
    with override_settings(SIMPLE_JWT={**settings.SIMPLE_JWT, "USER_ID_CLAIM": "user_id"}):
        errors = check_token_blacklist(None)

    assert [e.id for e in errors] == ["accounts.E003"]
