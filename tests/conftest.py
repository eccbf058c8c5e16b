import pytest
from django.core.cache import cache
from rest_framework.test import APIClient
from rest_framework_simplejwt.tokens import RefreshToken

from accounts.authentication import token_cache, user_cache
from accounts.models import User
from conversations.models import Conversation, Thread
from conversations.runs.wakeups import stop_listening
from tests.task_queue import remove_test_queue, use_test_queue

PASSWORD = "correct horse battery staple"


def pytest_configure(config):
    # Before any test database is made: it is migrated, which makes the
    # queue's tables, and they must be made there.
    use_test_queue()


def pytest_unconfigure(config):
    remove_test_queue()


@pytest.fixture(scope="session", autouse=True)
def _run_listener_stopped_at_the_end(django_db_setup):
    # Its connection to the test database would keep the database from
    # being dropped; it is torn down before django_db_setup's teardown.
    yield
    stop_listening()


@pytest.fixture(autouse=True)
def _offline_provider(settings):
    # The offline echo provider, whatever the developer's shell exports
    # (LLM_PROVIDER=openai would send every test's run to a real model).
    # Tests of the OpenAI provider set their own (tests/conftest_openai.py).
    settings.LLM_PROVIDER = "echo"
    settings.LLM_MODEL = ""
    settings.ECHO_DELAY_MS = 0


@pytest.fixture
def plain_static(settings):
    """Pages link static files by their hashed names, which need collectstatic's
    manifest; in-process tests link the plain names instead (the browser tests
    serve collected files, tests/conftest_browser.py)."""
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }


@pytest.fixture(autouse=True)
def _fast_password_hasher(settings):
    # The default PBKDF2 costs a quarter of a second per user.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def _fresh_cache():
    # Throttle counters live in the cache, tokens and users in the
    # authentication's own; no test inherits another's.
    for each in (cache, token_cache, user_cache):
        each.clear()
    yield
    for each in (cache, token_cache, user_cache):
        each.clear()


@pytest.fixture
def cold_auth_cache(settings):
    """Every request loads its user, as a process's first one does: for pinned query counts."""
    settings.AUTH_CACHE_SECONDS = 0


def make_user(username: str) -> User:
    return User.objects.create_user(username=username, password=PASSWORD)


def client_for(user: User) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {RefreshToken.for_user(user).access_token}")
    return client


@pytest.fixture
def owner(db) -> User:
    return make_user("owner")


@pytest.fixture
def stranger(db) -> User:
    return make_user("stranger")


@pytest.fixture
def api(owner) -> APIClient:
    """An API client authenticated as ``owner``."""
    return client_for(owner)


@pytest.fixture
def stranger_api(stranger) -> APIClient:
    return client_for(stranger)


@pytest.fixture
def anon() -> APIClient:
    return APIClient()


@pytest.fixture
def session(owner) -> Conversation:
    """A session of ``owner``."""
    return Conversation.objects.create(user=owner)


@pytest.fixture
def thread(session) -> Thread:
    """A thread in ``session``."""
    return Thread.objects.create(conversation=session)
