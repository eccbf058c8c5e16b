"""The chat page at / in headless Chromium, against a real gunicorn.

Threads, history, turns, retry, feedback, rename and delete go through the
ChatKit protocol endpoint, the rest through REST; each test checks what the
page shows and, over the API, what the server stored.
"""

import re
import urllib.request

import pytest
from playwright.sync_api import Page, expect

from tests.page_helpers import (
    REPLIES,
    USER_TEXTS,
    ApiReader,
    echo,
    last_reply_partial,
    new_username,
    send,
    serve_page,
    shot,
    sign_up,
    words,
)

pytest_plugins = ["tests.conftest_browser"]

THREAD_LINKS = "#thread-list .thread-open"


@pytest.fixture(scope="module")
def page_server(django_db_setup, static_root):
    # Two replies at once per user, so that a third is refused (429) quickly.
    yield from serve_page(static_root, MAX_ACTIVE_RUNS_PER_USER="2")


def session_id(page: Page) -> str:
    return page.locator("#session-select").input_value()


def thread_id(page: Page) -> str:
    match = re.search(r"thread=([0-9a-f-]{36})", page.url)
    assert match, page.url
    return match[1]


def messages(api: ApiReader, page: Page, query: str = "") -> list[dict]:
    return api.get(f"/sessions/{session_id(page)}/threads/{thread_id(page)}/messages{query}")


def test_sign_up_and_the_first_reply_streams_in(page, page_server):
    page.goto("/")
    shot(page, "01-sign-in")
    username = sign_up(page)
    shot(page, "02-signed-in")
    text = words(30, "stream")
    send(page, text)
    # Seen while it is being written, then whole.
    partial = last_reply_partial(page, echo(text))
    assert echo(text).startswith(partial)
    shot(page, "03-streaming")
    expect(page.locator(REPLIES)).to_have_text([echo(text)])
    expect(page.locator(USER_TEXTS)).to_have_text([text])
    expect(page.locator("#reply-status")).to_have_text("Reply finished.")
    # The first run names the thread (thread.updated) and the session.
    expect(page.locator(THREAD_LINKS)).to_have_text([re.compile("stream0")])
    expect(page.locator("#session-select option")).to_have_text([re.compile("stream0")])
    shot(page, "04-reply-done")
    stored = messages(ApiReader(page_server, username), page)
    assert [(m["role"], m["content"], m["status"]) for m in stored] == [
        ("user", text, "completed"),
        ("assistant", echo(text), "completed"),
    ]


def test_a_second_thread_keeps_the_first(page):
    sign_up(page)
    send(page, "first thread message")
    expect(page.locator(REPLIES)).to_have_text([echo("first thread message")])
    first = thread_id(page)
    page.click("#thread-new")
    expect(page.locator("#messages .message")).to_have_count(0)
    send(page, "second thread message")
    expect(page.locator(REPLIES)).to_have_text([echo("second thread message")])
    assert thread_id(page) != first
    expect(page.locator(THREAD_LINKS)).to_have_count(2)
    shot(page, "05-two-threads")
    page.locator(THREAD_LINKS, has_text="first thread").click()
    expect(page.locator(USER_TEXTS)).to_have_text(["first thread message"])
    expect(page.locator(REPLIES)).to_have_text([echo("first thread message")])
    assert thread_id(page) == first


def test_stop_keeps_the_partial_reply(page, page_server):
    username = sign_up(page)
    text = words(60, "stop")
    send(page, text)
    last_reply_partial(page, echo(text))
    page.click("#stop")
    expect(page.locator("#messages .from-assistant .note")).to_have_text(["Stopped."])
    expect(page.locator("#reply-status")).to_have_text("Reply stopped.")
    shown = page.locator(REPLIES).inner_text()
    assert echo(text).startswith(shown)
    assert len(shown) < len(echo(text))
    shot(page, "06-stopped")
    reply = messages(ApiReader(page_server, username), page)[-1]
    assert (reply["role"], reply["status"], reply["content"]) == ("assistant", "incomplete", shown)
    # The send button is back, and the kept text is what history shows.
    page.reload()
    expect(page.locator(REPLIES)).to_have_text([shown])
    expect(page.locator("#send")).to_be_enabled()


def test_a_reload_mid_reply_picks_the_reply_up_and_shows_it_finish(page, page_server):
    username = sign_up(page)
    # Five seconds of reply: time enough for a reload on a busy machine.
    text = words(100, "reload")
    send(page, text)
    before = last_reply_partial(page, echo(text))
    page.reload()
    expect(page.locator("#whoami")).to_have_text(f"Signed in as {username}")
    # Still being written after the reload, and never shorter than before it.
    after = last_reply_partial(page, echo(text))
    assert after.startswith(before) or before.startswith(after)
    expect(page.locator("#stop")).to_be_visible()
    shot(page, "07-resumed-after-reload")
    expect(page.locator(REPLIES)).to_have_text([echo(text)])
    expect(page.locator(USER_TEXTS)).to_have_text([text])
    expect(page.locator("#reply-status")).to_have_text("Reply finished.")
    expect(page.locator("#stop")).to_be_hidden()
    runs = ApiReader(page_server, username).get(
        f"/sessions/{session_id(page)}/threads/{thread_id(page)}/runs"
    )
    assert [run["status"] for run in runs] == ["completed"]


def test_retry_replaces_the_reply(page, page_server):
    username = sign_up(page)
    send(page, "say it again")
    expect(page.locator(REPLIES)).to_have_text([echo("say it again")])
    first_reply = page.locator("#messages .from-assistant").get_attribute("data-item-id")
    page.get_by_role("button", name="Retry").click()
    expect(page.locator("#messages .from-assistant")).not_to_have_attribute(
        "data-item-id", first_reply
    )
    expect(page.locator(REPLIES)).to_have_text([echo("say it again")])
    expect(page.locator("#reply-status")).to_have_text("Reply finished.")
    shot(page, "08-retried")
    api = ApiReader(page_server, username)
    every = messages(api, page, "?include_superseded=true")
    assert [(m["role"], m["superseded"]) for m in every] == [
        ("user", False),
        ("assistant", True),
        ("assistant", False),
    ]
    assert every[1]["id"] == first_reply


def test_feedback_is_stored_and_shown_again(page, page_server):
    username = sign_up(page)
    send(page, "rate me")
    expect(page.locator(REPLIES)).to_have_text([echo("rate me")])
    good = page.get_by_role("button", name="Good reply")
    bad = page.get_by_role("button", name="Bad reply")
    good.click()
    expect(good).to_have_attribute("aria-pressed", "true")
    api = ApiReader(page_server, username)
    assert messages(api, page)[-1]["feedback"] == "positive"
    bad.click()
    expect(bad).to_have_attribute("aria-pressed", "true")
    expect(good).to_have_attribute("aria-pressed", "false")
    assert messages(api, page)[-1]["feedback"] == "negative"
    page.reload()
    expect(page.get_by_role("button", name="Bad reply")).to_have_attribute("aria-pressed", "true")
    shot(page, "09-feedback")


def test_rename_and_delete_a_thread(page, page_server):
    username = sign_up(page)
    send(page, "a thread to rename")
    expect(page.locator(REPLIES)).to_have_text([echo("a thread to rename")])
    renamed = thread_id(page)
    page.get_by_role("button", name=re.compile("^Rename thread")).click()
    page.get_by_label("New name for the thread").fill("Holiday plans")
    page.get_by_role("button", name="Save name").click()
    expect(page.locator(THREAD_LINKS)).to_have_text(["Holiday plans"])
    expect(page.locator("#thread-title")).to_have_text("Holiday plans")
    shot(page, "10-renamed")
    api = ApiReader(page_server, username)
    sid = session_id(page)
    assert api.get(f"/sessions/{sid}/threads/{renamed}")["title"] == "Holiday plans"
    page.get_by_role("button", name="Delete thread: Holiday plans").click()
    shot(page, "11-delete-confirm")
    page.get_by_role("button", name="Delete thread", exact=True).click()
    expect(page.locator(THREAD_LINKS)).to_have_count(0)
    expect(page.locator("#messages .message")).to_have_count(0)
    assert api.get(f"/sessions/{sid}/threads") == []


def test_a_session_renamed_instructed_and_deleted(page, page_server):
    username = sign_up(page)
    api = ApiReader(page_server, username)
    first = session_id(page)
    page.get_by_role("button", name="Rename", exact=True).click()
    page.get_by_label("New name for the session").fill("Work")
    page.get_by_role("button", name="Save name").click()
    expect(page.locator("#session-select option")).to_have_text(["Work"])
    page.locator("#instructions-panel summary").click()
    page.get_by_label("What the assistant is told").fill("Answer in French.")
    page.get_by_role("button", name="Save instructions").click()
    expect(page.locator("#instructions-status")).to_have_text("Instructions saved.")
    shot(page, "22-session-instructions")
    stored = api.get(f"/sessions/{first}")
    assert (stored["title"], stored["instructions"]) == ("Work", "Answer in French.")
    page.get_by_role("button", name="New session").click()
    expect(page.locator("#session-select option")).to_have_count(2)
    expect(page.get_by_label("What the assistant is told")).to_have_value("")
    page.locator("#session-select").select_option(label="Work")
    expect(page.get_by_label("What the assistant is told")).to_have_value("Answer in French.")
    page.get_by_role("button", name="Delete", exact=True).click()
    page.get_by_role("button", name="Delete session").click()
    expect(page.locator("#session-select option")).to_have_count(1)
    assert [session["id"] for session in api.get("/sessions")] == [session_id(page)]
    assert session_id(page) != first


def test_a_long_history_is_shown_whole_and_in_order(page, page_server):
    username = sign_up(page)
    send(page, "turn 0")
    expect(page.locator(REPLIES)).to_have_text([echo("turn 0")])
    # More turns than a page of items (20), written over REST meanwhile.
    api = ApiReader(page_server, username)
    runs = f"/api/v1/chatkit/sessions/{session_id(page)}/threads/{thread_id(page)}/runs"
    for turn in range(1, 13):
        api.call("POST", runs, {"input": f"turn {turn}"})
    protocol_types = []
    page.on(
        "request",
        lambda request: (
            request.url.endswith("/chatkit")
            and protocol_types.append(request.post_data_json["type"])
        ),
    )
    page.reload()
    expect(page.locator(USER_TEXTS)).to_have_text([f"turn {turn}" for turn in range(13)])
    expect(page.locator(REPLIES)).to_have_text([echo(f"turn {turn}") for turn in range(13)])
    # The thread's first page, then the rest.
    assert protocol_types == ["threads.list", "threads.get_by_id", "items.list"]


def test_markup_in_messages_is_shown_as_text(page, watch):
    sign_up(page)
    markup = "<img src=x onerror=alert(1)> <script>alert(2)</script> <b>bold</b>"
    send(page, markup)
    expect(page.locator(REPLIES)).to_have_text([echo(markup)])
    expect(page.locator(USER_TEXTS)).to_have_text([markup])
    # From history too (the ChatKit items), not only from the stream.
    page.reload()
    expect(page.locator(REPLIES)).to_have_text([echo(markup)])
    shot(page, "12-markup-as-text")
    assert page.locator("#messages img, #messages script, #messages b").count() == 0
    assert watch.dialogs == []


def test_a_second_user_sees_none_of_the_first_users_sessions(browser, page_server, page):
    first = sign_up(page)
    send(page, "private words of the first user")
    expect(page.locator(REPLIES)).to_have_text([echo("private words of the first user")])
    page.get_by_role("button", name="New session").click()
    expect(page.locator("#session-select option")).to_have_count(2)
    first_sessions = {s["id"] for s in ApiReader(page_server, first).get("/sessions")}
    other = browser.new_context(base_url=page_server)
    try:
        second_page = other.new_page()
        second = sign_up(second_page)
        expect(second_page.locator("#session-select option")).to_have_count(1)
        expect(second_page.locator(THREAD_LINKS)).to_have_count(0)
        assert "private words" not in second_page.content()
        shot(second_page, "13-second-user")
        second_sessions = {s["id"] for s in ApiReader(page_server, second).get("/sessions")}
        assert len(second_sessions) == 1
        assert not second_sessions & first_sessions
        assert session_id(second_page) in second_sessions
    finally:
        other.close()


def test_keyboard_sign_in_reload_stays_signed_in_and_sign_out_revokes(page, page_server):
    username = sign_up(page)
    page.click("#sign-out")
    expect(page.locator("#auth-message")).to_have_text("You are signed out.")
    # Sign in by keyboard alone: the form has focus, Tab moves, Enter submits.
    expect(page.locator("#sign-in-username")).to_be_focused()
    page.keyboard.type(username)
    page.keyboard.press("Tab")
    page.keyboard.type("a long passphrase for the page tests")
    page.keyboard.press("Enter")
    expect(page.locator("#composer-input")).to_be_focused()
    page.keyboard.type("typed, not clicked")
    page.keyboard.press("Enter")
    expect(page.locator(REPLIES)).to_have_text([echo("typed, not clicked")])
    # A reload stays signed in (the refresh token, rotated) and reopens the thread.
    refresh_before = page.evaluate("localStorage.getItem('chat.refresh')")
    page.reload()
    expect(page.locator("#whoami")).to_have_text(f"Signed in as {username}")
    expect(page.locator(REPLIES)).to_have_text([echo("typed, not clicked")])
    refresh_after = page.evaluate("localStorage.getItem('chat.refresh')")
    assert refresh_after
    assert refresh_after != refresh_before
    api = ApiReader(page_server, username)
    assert api.status("POST", "/api/v1/auth/token/refresh", {"refresh": refresh_before}) == 401
    page.click("#sign-out")
    expect(page.locator("#sign-in-form")).to_be_visible()
    assert page.evaluate("localStorage.getItem('chat.refresh')") is None
    assert api.status("POST", "/api/v1/auth/token/refresh", {"refresh": refresh_after}) == 401
    page.reload()
    expect(page.locator("#sign-in-form")).to_be_visible()


def test_a_revoked_sign_in_asks_to_sign_in_again(page, page_server):
    username = sign_up(page)
    # Another tab (or device) signs this refresh token out; the access token
    # in this page still works until it is refreshed.
    refresh = page.evaluate("localStorage.getItem('chat.refresh')")
    api = ApiReader(page_server, username)
    assert api.status("POST", "/api/v1/auth/logout", {"refresh": refresh}) == 200
    page.reload()
    expect(page.locator("#auth-message")).to_have_text(
        "Your sign-in has expired. Please sign in again."
    )
    shot(page, "14-signed-out-401")


def test_errors_are_sentences_in_place(context, page, page_server):
    username = sign_up(page)
    send(page, "hello")
    expect(page.locator(REPLIES)).to_have_text([echo("hello")])
    # 409: a second tab on the same thread writes while the first's reply runs.
    other = context.new_page()
    other.goto(page.url)
    expect(other.locator(REPLIES)).to_have_text([echo("hello")])
    text = words(100, "busy")
    send(page, text)
    last_reply_partial(page, echo(text))
    send(other, "me too")
    expect(other.locator("#composer-error")).to_have_text(
        "A reply is still being written in this thread. Wait for it to finish, or stop it, "
        "then try again."
    )
    # What could not be sent goes back into the box, and the reply that is
    # being written shows up here too.
    expect(other.locator("#composer-input")).to_have_value("me too")
    last_reply_partial(other, echo(text))
    expect(other.locator(USER_TEXTS)).to_have_text(["hello", text])
    expect(other.locator(REPLIES)).to_have_count(2)
    shot(other, "15-error-409")
    other.close()
    # 429 with its Retry-After: past MAX_ACTIVE_RUNS_PER_USER (2 here) replies at once.
    page.click("#thread-new")
    send(page, words(60, "second"))
    last_reply_partial(page, echo(words(60, "second")))
    page.click("#thread-new")
    send(page, "a third at once")
    expect(page.locator("#composer-error")).to_have_text(
        "Too many requests. Please wait 5 seconds and try again."
    )
    shot(page, "16-error-429")
    # 413: a body past MAX_BODY_BYTES.
    page.fill("#composer-input", "x" * (1024 * 1024 + 1))
    page.press("#composer-input", "Enter")
    expect(page.locator("#composer-error")).to_have_text(
        "That message is too large to send. Shorten it and try again."
    )
    page.fill("#composer-input", "")
    shot(page, "17-error-413")
    # The long replies would outlive the test.
    ApiReader(page_server, username).cancel_active_runs()


def test_503_and_other_statuses_read_as_sentences(page):
    # The database being down cannot be staged for one page; the browser's
    # network layer answers this one request as the API does in an outage.
    page.route(
        "**/api/v1/auth/token",
        lambda route: route.fulfill(
            status=503,
            headers={"Retry-After": "7", "Content-Type": "application/json"},
            body='{"success": false, "error": {"code": "SERVICE_UNAVAILABLE", '
            '"message": "Service unavailable.", "details": null, "request_id": "x"}}',
        ),
    )
    page.goto("/")
    page.fill("#sign-in-username", new_username())
    page.fill("#sign-in-password", "whatever it is")
    page.click("#sign-in-form button[type=submit]")
    expect(page.locator("#sign-in-form [data-error]")).to_have_text(
        "The service is unavailable right now. Please try again in 7 seconds."
    )
    shot(page, "18-error-503")


def test_phone_width_in_dark_mode(transactional_db, browser, page_server):
    context = browser.new_context(
        base_url=page_server,
        viewport={"width": 390, "height": 844},
        color_scheme="dark",
        is_mobile=True,
        has_touch=True,
    )
    try:
        page = context.new_page()
        sign_up(page)
        send(page, "small screen")
        expect(page.locator(REPLIES)).to_have_text([echo("small screen")])
        fits = "document.documentElement.scrollWidth <= window.innerWidth"
        assert page.evaluate(fits)
        background = page.evaluate("getComputedStyle(document.body).backgroundColor")
        assert background == "rgb(15, 18, 22)"
        shot(page, "19-phone-dark")
        page.get_by_role("button", name="Menu").click()
        expect(page.locator(THREAD_LINKS)).to_have_count(1)
        assert page.evaluate(fits)
        shot(page, "20-phone-dark-menu")
    finally:
        context.close()


def test_static_files_are_served_hashed_by_whitenoise(transactional_db, page_server):
    with urllib.request.urlopen(page_server + "/", timeout=15) as response:
        html = response.read().decode()
    paths = re.findall(r'(?:src|href)="(/static/web/[^"]+)"', html)
    assert sorted(path.rsplit("/", 1)[-1].split(".")[0] for path in paths) == ["chat"] * 3
    for path in paths:
        assert re.fullmatch(r"/static/web/(icons/)?chat\.[0-9a-f]{12}\.(js|css|svg)", path)
        request = urllib.request.Request(page_server + path, headers={"Accept-Encoding": "gzip"})
        with urllib.request.urlopen(request, timeout=15) as response:
            assert response.status == 200
            assert "immutable" in response.headers["Cache-Control"]
            assert response.headers["Content-Encoding"] == "gzip"
