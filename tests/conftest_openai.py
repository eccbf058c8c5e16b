"""Fixtures for the local OpenAI-compatible server (tests/openai_server.py).

Test modules load them with ``pytest_plugins = ["tests.conftest_openai"]``.
"""

from collections.abc import Iterator

import pytest

from conversations.providers.openai import shared_client
from tests.openai_server import TEST_API_KEY, TEST_MODEL, FakeOpenAIServer


@pytest.fixture
def openai_server(monkeypatch) -> Iterator[FakeOpenAIServer]:
    """A running fake server; script it with ``queue()``, read ``requests``."""
    # The SDK honours proxy variables; the server is local.
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    server = FakeOpenAIServer().start()
    yield server
    server.stop()


@pytest.fixture
def openai_settings(settings, openai_server) -> Iterator[FakeOpenAIServer]:
    """Settings that make ``get_provider()`` the real OpenAIProvider aimed at the server."""
    settings.LLM_PROVIDER = "openai"
    settings.LLM_MODEL = TEST_MODEL
    settings.OPENAI_BASE_URL = openai_server.base_url
    settings.OPENAI_API_KEY = TEST_API_KEY
    settings.LLM_MAX_RETRIES = 0
    settings.LLM_TIMEOUT_SECONDS = 5.0
    # get_provider() keeps one SDK client per configuration.
    shared_client.cache_clear()
    yield openai_server
    shared_client.cache_clear()
