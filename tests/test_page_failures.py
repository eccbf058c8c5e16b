"""The chat page when a reply fails: a real OpenAI-compatible provider (the
local fake server, tests/openai_server.py) that cuts every stream short."""

from collections.abc import Iterator

import pytest
from playwright.sync_api import expect

from tests.openai_server import TEST_API_KEY, TEST_MODEL, FakeOpenAIServer, Reply
from tests.page_helpers import REPLIES, ApiReader, send, serve_page, shot, sign_up

pytest_plugins = ["tests.conftest_browser"]

CUT_SHORT = Reply(text="Half of an answer that never ends.", chunks=6, chunk_delay=0.1, cut_after=3)


@pytest.fixture(scope="module")
def provider() -> Iterator[FakeOpenAIServer]:
    server = FakeOpenAIServer()
    server.default = CUT_SHORT
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def page_server(django_db_setup, static_root, provider):
    yield from serve_page(
        static_root,
        LLM_PROVIDER="openai",
        LLM_MODEL=TEST_MODEL,
        OPENAI_BASE_URL=provider.base_url,
        OPENAI_API_KEY=TEST_API_KEY,
        LLM_MAX_RETRIES="0",
        LLM_TIMEOUT_SECONDS="5",
        NO_PROXY="127.0.0.1",
        no_proxy="127.0.0.1",
    )


def test_a_failed_reply_keeps_its_text_and_says_why(page, page_server):
    username = sign_up(page)
    send(page, "tell me everything")
    expect(page.locator("#reply-status")).to_have_text("The reply failed.")
    api = ApiReader(page_server, username)
    session = page.locator("#session-select").input_value()
    thread = api.get(f"/sessions/{session}/threads")[0]["id"]
    [run] = api.get(f"/sessions/{session}/threads/{thread}/runs")
    assert run["status"] == "failed"
    # The run's reason, in place of the reply's actions.
    note = page.locator("#messages .from-assistant .note")
    expect(note).to_have_text(f"The reply failed: {run['error']['message']}")
    # The text written before the failure is kept, as the server stored it.
    shown = page.locator(REPLIES).inner_text()
    assert shown
    assert "Half of an answer that never ends.".startswith(shown)
    shot(page, "21-failed-run")
    reply = api.get(f"/sessions/{session}/threads/{thread}/messages")[-1]
    assert (reply["status"], reply["content"]) == ("incomplete", shown)
    # After a reload, history says the reply was cut short.
    page.reload()
    expect(page.locator(REPLIES)).to_have_text([shown])
    expect(note).to_have_text("This reply was cut short.")
