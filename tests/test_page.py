"""The chat page's document: served at /, its Content-Security-Policy, and
nothing in it that such a policy would have to allow (no inline script or
style). The page itself is tested in a browser (test_page_browser.py)."""

from html.parser import HTMLParser

import pytest

POLICY = {
    "default-src": ["'none'"],
    "script-src": ["'self'"],
    "style-src": ["'self'"],
    "img-src": ["'self'"],
    "connect-src": ["'self'"],
    "manifest-src": ["'self'"],
    "base-uri": ["'none'"],
    "form-action": ["'none'"],
    "frame-ancestors": ["'none'"],
}


@pytest.fixture(autouse=True)
def _plain_static(plain_static):
    """Admin pages and the chat page link static files (see conftest.plain_static)."""


def directives(header: str) -> dict[str, list[str]]:
    parsed = {}
    for directive in header.split(";"):
        name, *values = directive.split()
        parsed[name] = values
    return parsed


class Inline(HTMLParser):
    """Collects what a strict policy would block: inline scripts, styles, handlers."""

    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[dict] = []
        self.inline: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        for name in attributes:
            if name == "style" or name.startswith("on"):
                self.inline.append(f"<{tag} {name}=...>")
        if tag == "style":
            self.inline.append("<style>")
        if tag == "script":
            self.scripts.append(attributes)
            self._in_script = True

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_script = False

    def handle_data(self, data):
        if self._in_script and data.strip():
            self.inline.append(f"<script>{data.strip()[:40]}")


def test_the_page_is_served_at_the_root(anon, db):
    response = anon.get("/")
    assert response.status_code == 200
    assert response["Content-Type"] == "text/html; charset=utf-8"
    assert b'<form id="sign-in-form"' in response.content


def test_the_page_has_its_content_security_policy(anon, db):
    response = anon.get("/")
    assert directives(response["Content-Security-Policy"]) == POLICY
    assert response["Referrer-Policy"] == "no-referrer"
    assert response["X-Frame-Options"] == "DENY"


def test_the_page_has_no_inline_script_style_or_handler(anon, db):
    found = Inline()
    found.feed(anon.get("/").content.decode())
    assert found.inline == []
    assert [script.get("src", "").rsplit("/", 1)[-1] for script in found.scripts] == ["chat.js"]
    assert found.scripts[0]["type"] == "module"


@pytest.mark.parametrize("path", ["/admin/login/", "/api/docs/"])
def test_the_policy_is_the_pages_alone(anon, db, path):
    # The admin and Swagger UI have inline scripts of their own.
    response = anon.get(path)
    assert response.status_code == 200
    assert "Content-Security-Policy" not in response


def test_the_page_answers_get_and_head_only(anon, db):
    assert anon.head("/").status_code == 200
    assert anon.post("/", {}).status_code == 405
