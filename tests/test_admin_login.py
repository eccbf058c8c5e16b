"""The admin's sign-in form is throttled at least as the API's token endpoint is.

Failed sign-ins count per client address and per username, at the ``auth``
rate (THROTTLE_AUTH); past it a sign-in gets 429 with ``Retry-After`` and no
password is checked, the right one included. Successful sign-ins do not
count, and other addresses and accounts are not held back.
"""

import pytest
from django.contrib.auth.backends import ModelBackend
from django.test import Client
from rest_framework.throttling import SimpleRateThrottle

from tests.conftest import PASSWORD, make_user

LOGIN = "/admin/login/"
WRONG = "not the password"


@pytest.fixture(autouse=True)
def _plain_static(plain_static):
    """Admin pages and the chat page link static files (see conftest.plain_static)."""


@pytest.fixture
def rates(monkeypatch):
    def set_rates(**scopes: str | None) -> None:
        for scope, rate in scopes.items():
            monkeypatch.setitem(SimpleRateThrottle.THROTTLE_RATES, scope, rate)

    return set_rates


@pytest.fixture
def clock(monkeypatch) -> list[float]:
    """The throttles' clock, moved by the test: ``clock[0] += 61``."""
    now = [1_000_000.0]
    monkeypatch.setattr(SimpleRateThrottle, "timer", staticmethod(lambda: now[0]))
    return now


@pytest.fixture
def checked(monkeypatch) -> list[str]:
    """Usernames whose password the admin checked, in order."""
    seen: list[str] = []
    authenticate = ModelBackend.authenticate

    def spy(self, request, username=None, password=None, **kwargs):
        seen.append(username)
        return authenticate(self, request, username=username, password=password, **kwargs)

    monkeypatch.setattr(ModelBackend, "authenticate", spy)
    return seen


def make_staff(username: str):
    user = make_user(username)
    user.is_staff = True
    user.save()
    return user


@pytest.fixture
def staff(db):
    return make_staff("staffer")


def sign_in(username: str, password: str, address: str = "10.0.0.1"):
    client = Client(REMOTE_ADDR=address)
    return client.post(LOGIN, {"username": username, "password": password, "next": "/admin/"})


def assert_throttled(response) -> int:
    assert response.status_code == 429, response.content[:300]
    assert response["Content-Type"].startswith("text/html")
    wait = response["Retry-After"]
    assert wait.isascii(), wait
    assert wait.isdigit(), wait
    assert 1 <= int(wait) <= 60
    assert f"Try again in {wait} second" in response.content.decode()
    return int(wait)


def test_sixty_wrong_passwords_in_a_row_check_only_as_many_as_the_auth_rate(staff, checked):
    # The default rate, THROTTLE_AUTH's 20/min.
    statuses = [sign_in("staffer", WRONG).status_code for _ in range(60)]

    assert statuses == [200] * 20 + [429] * 40
    assert checked == ["staffer"] * 20


def test_past_the_rate_even_the_right_password_is_429_without_being_checked(staff, rates, checked):
    rates(auth="3/min")
    for _ in range(3):
        response = sign_in("staffer", WRONG)
        assert response.status_code == 200
        assert response.context["form"].errors

    response = sign_in("staffer", PASSWORD)

    assert_throttled(response)
    assert checked == ["staffer"] * 3
    assert "_auth_user_id" not in response.client.session


def test_failures_from_one_address_hold_back_other_usernames_there(staff, rates, checked):
    rates(auth="3/min")
    other = make_staff("other")
    for index in range(3):
        assert sign_in(f"guess{index}", WRONG).status_code == 200

    assert_throttled(sign_in(other.username, PASSWORD))
    # Another address is not affected.
    assert sign_in(other.username, PASSWORD, address="10.0.0.2").status_code == 302


def test_failures_for_one_username_hold_it_back_from_every_address(staff, rates, checked):
    rates(auth="3/min")
    for index in range(3):
        assert sign_in("staffer", WRONG, address=f"10.0.1.{index}").status_code == 200

    assert_throttled(sign_in("staffer", PASSWORD, address="10.0.2.1"))
    assert_throttled(sign_in("STAFFER", WRONG, address="10.0.2.2"))
    assert len(checked) == 3
    # Another account from a fresh address is not affected.
    make_staff("colleague")
    assert sign_in("colleague", PASSWORD, address="10.0.2.3").status_code == 302


def test_successful_sign_ins_do_not_count(staff, rates):
    rates(auth="3/min")

    statuses = [sign_in("staffer", PASSWORD).status_code for _ in range(6)]

    assert statuses == [302] * 6


def test_a_non_staff_account_with_its_right_password_counts_as_a_failure(owner, rates):
    rates(auth="2/min")
    for _ in range(2):
        response = sign_in(owner.username, PASSWORD)
        assert response.status_code == 200
        assert response.context["form"].errors

    assert_throttled(sign_in(owner.username, PASSWORD))


def test_the_throttle_lifts_when_the_oldest_failure_ages_out(staff, rates, clock):
    rates(auth="3/min")
    sign_in("staffer", WRONG)
    clock[0] += 20
    sign_in("staffer", WRONG)
    sign_in("staffer", WRONG)

    assert assert_throttled(sign_in("staffer", PASSWORD)) == 40
    clock[0] += 39
    assert_throttled(sign_in("staffer", PASSWORD))
    clock[0] += 1.5
    assert sign_in("staffer", PASSWORD).status_code == 302


def test_no_auth_rate_means_no_throttle(staff, rates):
    rates(auth=None)

    statuses = [sign_in("staffer", WRONG).status_code for _ in range(25)]

    assert statuses == [200] * 25


def test_the_sign_in_page_itself_is_never_throttled(staff, rates):
    rates(auth="1/min")
    assert sign_in("staffer", WRONG).status_code == 200

    assert Client(REMOTE_ADDR="10.0.0.1").get(LOGIN).status_code == 200
