"""Fixtures for the chat page in a real browser: load with
``pytest_plugins = ["tests.conftest_browser"]``.

``page_server`` is one gunicorn per module serving the page the way
production does (``collectstatic`` output, hashed names, whitenoise) on the
test database; a module overrides it to change the server's environment.
``browser`` is one headless Chromium per module (Debian's, at
``CHROMIUM_PATH``, default ``/usr/bin/chromium``: Playwright's own browser
download is not reachable here), and ``page`` a page in a fresh context per
test, so no test sees another's storage or tokens.

Each test gets ``transactional_db`` (the server's rows are flushed after
it) and reads what the server stored over the HTTP API
(``tests.page_helpers.ApiReader``), as a client would.
"""

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings
from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright

from tests.page_helpers import CHROMIUM_PATH, serve_page
from tests.sse import PROJECT_DIR


@pytest.fixture(scope="session")
def static_root(tmp_path_factory) -> Path:
    """``collectstatic`` into a directory of this test run, as a deployment does."""
    root = tmp_path_factory.mktemp("static")
    subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput", "--verbosity", "0"],
        cwd=PROJECT_DIR,
        env={**os.environ, "STATIC_ROOT": str(root), "SECRET_KEY": settings.SECRET_KEY},
        check=True,
        timeout=120,
    )
    return root


@pytest.fixture(scope="module")
def page_server(django_db_setup, static_root) -> Iterator[str]:
    yield from serve_page(static_root)


@pytest.fixture(scope="module")
def browser(page_server) -> Iterator[Browser]:
    """Headless Chromium for the module; closed before its server stops."""
    if not CHROMIUM_PATH.exists():
        missing = f"no Chromium at {CHROMIUM_PATH} (apt-get install chromium; .ci/run does)"
        # CI installs it, so there a missing browser is a failure, never a skip.
        if os.environ.get("CI"):
            pytest.fail(missing)
        pytest.skip(missing)
    with pytest.MonkeyPatch.context() as patch, sync_playwright() as playwright:
        # Playwright's synchronous API drives its event loop from greenlets of
        # this thread, so asyncio reports a loop running here and Django's
        # guard would refuse every database call, the test database's flush
        # after each test included, though no coroutine ever makes one.
        patch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM_PATH))
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def context(transactional_db, browser, page_server) -> Iterator[BrowserContext]:
    context = browser.new_context(base_url=page_server, viewport={"width": 1100, "height": 760})
    context.set_default_timeout(15_000)
    try:
        yield context
    finally:
        context.close()


class PageWatch:
    """What a page did that it should not: dialogs, script errors, foreign requests,
    and anything its Content-Security-Policy refused (the policy would break it)."""

    def __init__(self, page: Page, origin: str) -> None:
        self.dialogs: list[str] = []
        self.errors: list[str] = []
        self.foreign: list[str] = []
        self.refused: list[str] = []
        self.origin = origin
        page.on("dialog", self._dialog)
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.errors.append(str(error)))
        page.on("request", self._request)

    def _dialog(self, dialog) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def _console(self, message) -> None:
        if "Content Security Policy" in message.text:
            self.refused.append(message.text)

    def _request(self, request) -> None:
        if not request.url.startswith(self.origin + "/"):
            self.foreign.append(request.url)


@pytest.fixture
def watched(context, page_server) -> Iterator[tuple[Page, PageWatch]]:
    """A page of a fresh context and its watch; what the watch saw fails the test."""
    page = context.new_page()
    watch = PageWatch(page, page_server)
    yield page, watch
    assert watch.dialogs == [], watch.dialogs
    assert watch.errors == [], watch.errors
    assert watch.foreign == [], watch.foreign
    assert watch.refused == [], watch.refused


@pytest.fixture
def page(watched) -> Page:
    return watched[0]


@pytest.fixture
def watch(watched) -> PageWatch:
    return watched[1]
