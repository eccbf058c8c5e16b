"""The browser tests' server, steps (sign up, write, read the conversation)
and a reader of what the server stored.

Set ``PAGE_SCREENSHOT_DIR`` to keep a PNG of each state a test names
(``shot``), to look at the page as a person would.
"""

import json
import os
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from playwright.sync_api import Page, expect

from tests.gunicorn_server import gunicorn_process

CHROMIUM_PATH = Path(os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium"))
PASSWORD = "a long passphrase for the page tests"
# This machine has two cores shared with other test runs.
expect.set_options(timeout=15_000)

# Each per-test user signs up from 127.0.0.1, past the default 20/min.
PAGE_SERVER_ENV = {
    "DJANGO_SETTINGS_MODULE": "tests.page_settings",
    "THROTTLE_AUTH": "1000/min",
    "WEB_THREADS": "16",
    # Each word of an echo reply 50 ms after the last: a reply of 80 words
    # takes 4 s, long enough to stop or reload it in the middle; short ones
    # are still quick.
    "ECHO_DELAY_MS": "50",
}

REPLIES = "#messages .from-assistant .text"
USER_TEXTS = "#messages .from-user .text"


def new_username() -> str:
    return f"user-{uuid.uuid4().hex[:12]}"


def sign_up(page: Page, username: str | None = None) -> str:
    """Open the page, create an account and wait until the chat is shown."""
    username = username or new_username()
    page.goto("/")
    page.fill("#sign-up-username", username)
    page.fill("#sign-up-password", PASSWORD)
    page.click("#sign-up-form button[type=submit]")
    expect(page.locator("#whoami")).to_have_text(f"Signed in as {username}")
    expect(page.locator("#sidebar-error")).to_be_empty()
    return username


def send(page: Page, text: str) -> None:
    page.fill("#composer-input", text)
    page.press("#composer-input", "Enter")


def echo(text: str) -> str:
    """What the echo provider replies to ``text``."""
    return f"Echo: {text}"


def words(count: int, tag: str = "word") -> str:
    """A message of ``count`` words, whose echo takes count x ECHO_DELAY_MS to write."""
    return " ".join(f"{tag}{index}" for index in range(count))


def last_reply_partial(page: Page, full: str) -> str:
    """Wait until the newest reply shows some but not all of ``full``; return what it shows."""
    handle = page.wait_for_function(
        """(full) => {
            const texts = document.querySelectorAll("#messages .from-assistant .text");
            const last = texts[texts.length - 1];
            const shown = last ? last.textContent : "";
            return shown.length > 0 && shown.length < full.length ? shown : null;
        }""",
        arg=full,
    )
    return handle.json_value()


def shot(page: Page, name: str) -> None:
    directory = os.environ.get("PAGE_SCREENSHOT_DIR")
    if directory:
        Path(directory).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(directory) / f"{name}.png"), full_page=True)


def serve_page(static_root: Path, **env: str) -> Iterator[str]:
    """gunicorn on the test database for the block; yields its base URL."""
    with gunicorn_process(STATIC_ROOT=str(static_root), **{**PAGE_SERVER_ENV, **env}) as server:
        yield f"http://127.0.0.1:{server.port}"


class ApiReader:
    """Reads what the server stored, over its REST API, as the page's user."""

    def __init__(self, base: str, username: str, password: str = PASSWORD) -> None:
        self.base = base
        tokens = self.call(
            "POST", "/api/v1/auth/token", {"username": username, "password": password}
        )
        self.access = tokens["data"]["access"]

    def call(self, method: str, path: str, body: Any = None) -> Any:
        request = urllib.request.Request(self.base + path, method=method)
        request.add_header("Content-Type", "application/json")
        if getattr(self, "access", None):
            request.add_header("Authorization", f"Bearer {self.access}")
        data = None if body is None else json.dumps(body).encode()
        with urllib.request.urlopen(request, data=data, timeout=15) as response:
            return json.loads(response.read())

    def get(self, path: str) -> Any:
        return self.call("GET", "/api/v1/chatkit" + path)["data"]

    def cancel_active_runs(self) -> int:
        """Cancel every run of the user still queued or in progress; how many there were."""
        cancelled = 0
        for session in self.get("/sessions?limit=100"):
            for thread in self.get(f"/sessions/{session['id']}/threads?limit=100"):
                runs = f"/sessions/{session['id']}/threads/{thread['id']}/runs"
                for run in self.get(runs):
                    if run["status"] in ("queued", "in_progress"):
                        self.call("POST", f"/api/v1/chatkit{runs}/{run['id']}/cancel")
                        cancelled += 1
        return cancelled

    def status(self, method: str, path: str, body: Any = None) -> int:
        try:
            self.call(method, path, body)
        except urllib.error.HTTPError as error:
            return error.code
        return 200
