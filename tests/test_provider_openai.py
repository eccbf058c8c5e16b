"""The real OpenAIProvider, through the official SDK, over HTTP to a local fake server.

First the provider alone (success, and each failure mapped to the port's
errors), then the same failures through ``POST .../runs``.
"""

import logging

import httpx2
import pytest

from conversations.llm import (
    ChatMessage,
    Completion,
    Delta,
    FinishReason,
    ProviderBadResponse,
    ProviderError,
    ProviderTimeout,
)
from conversations.models import Conversation, Message, Run, Thread
from conversations.providers import get_provider
from conversations.providers.openai import OpenAIProvider
from tests.openai_server import TEST_API_KEY, TEST_MODEL, Fail, Raw, Reply

pytest_plugins = ["tests.conftest_openai"]

# Text the fake server puts in its failures; it must never reach a client.
UPSTREAM_DETAIL = "upstream-internal-detail-9c1e"
SHORT_TIMEOUT = 0.5
LONGER_THAN_TIMEOUT = 2.0

MESSAGES = [
    ChatMessage(role="system", content="Be brief."),
    ChatMessage(role="user", content="Hi there"),
]

# (id, scripted answer, expected exception class, needs the short timeout)
FAILURES = [
    ("http_500", Fail(500, f"server exploded {UPSTREAM_DETAIL}"), ProviderError, False),
    ("http_400", Fail(400, f"bad request {UPSTREAM_DETAIL}"), ProviderError, False),
    ("http_429", Fail(429, f"slow down {UPSTREAM_DETAIL}"), ProviderError, False),
    ("timeout", Reply(delay=LONGER_THAN_TIMEOUT), ProviderTimeout, True),
    (
        "malformed_json",
        Raw(b'{"choices": [{"message": ' + UPSTREAM_DETAIL.encode()),
        ProviderBadResponse,
        False,
    ),
    ("empty_choices", Reply(empty_choices=True), ProviderBadResponse, False),
    ("content_null", Reply(text=None), ProviderBadResponse, False),
    ("content_empty", Reply(text=""), ProviderBadResponse, False),
]
FAILURE_PARAMS = [pytest.param(*case[1:], id=case[0]) for case in FAILURES]

ERROR_CODES = {
    ProviderError: "PROVIDER_ERROR",
    ProviderTimeout: "PROVIDER_TIMEOUT",
    ProviderBadResponse: "PROVIDER_BAD_RESPONSE",
}


@pytest.fixture
def provider(openai_settings) -> OpenAIProvider:
    provider = get_provider()
    assert isinstance(provider, OpenAIProvider)
    return provider


@pytest.fixture
def short_timeout(settings):
    settings.LLM_TIMEOUT_SECONDS = SHORT_TIMEOUT


# The provider alone.


def test_complete_returns_text_usage_and_sends_model_and_messages(provider, openai_server):
    openai_server.queue(Reply(text="Hello, human.", prompt_tokens=12, completion_tokens=4))

    completion = provider.complete(MESSAGES)

    assert completion.text == "Hello, human."
    assert completion.finish_reason is FinishReason.STOP
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (12, 4)
    assert completion.usage.total_tokens == 16
    assert completion.metadata == {"provider": "openai", "model": TEST_MODEL}
    [sent] = openai_server.requests
    assert sent["model"] == TEST_MODEL
    assert sent["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi there"},
    ]
    assert not sent.get("stream")
    assert openai_server.headers[0]["authorization"] == f"Bearer {TEST_API_KEY}"


def test_stream_deltas_concatenate_to_the_text(provider, openai_server):
    text = "Streaming replies arrive in several pieces."
    openai_server.queue(
        Reply(text=text, chunks=5, chunk_delay=0.01, prompt_tokens=9, completion_tokens=7)
    )

    items = list(provider.stream(MESSAGES))

    deltas, last = items[:-1], items[-1]
    assert len(deltas) == 5
    assert all(isinstance(item, Delta) and item.text for item in deltas)
    assert "".join(delta.text for delta in deltas) == text
    assert isinstance(last, Completion)
    assert last.text == text
    assert last.finish_reason is FinishReason.STOP
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (9, 7)
    [sent] = openai_server.requests
    assert sent["stream"] is True
    assert sent["stream_options"] == {"include_usage": True}
    assert sent["model"] == TEST_MODEL
    assert [m["role"] for m in sent["messages"]] == ["system", "user"]


def test_complete_cut_short_by_length_says_so(provider, openai_server):
    openai_server.queue(Reply(text="A reply that ran out of", finish_reason="length"))

    completion = provider.complete(MESSAGES)

    assert completion.text == "A reply that ran out of"
    assert completion.finish_reason is FinishReason.LENGTH


def test_stream_cut_short_by_length_says_so(provider, openai_server):
    openai_server.queue(Reply(text="A reply that ran out of", chunks=3, finish_reason="length"))

    *deltas, last = provider.stream(MESSAGES)

    assert "".join(d.text for d in deltas) == "A reply that ran out of"
    assert last.finish_reason is FinishReason.LENGTH


@pytest.mark.parametrize(("answer", "expected", "needs_short_timeout"), FAILURE_PARAMS)
def test_complete_maps_failures_to_provider_errors(
    provider, openai_server, settings, answer, expected, needs_short_timeout
):
    if needs_short_timeout:
        settings.LLM_TIMEOUT_SECONDS = SHORT_TIMEOUT
        provider = get_provider()
    openai_server.queue(answer)

    with pytest.raises(ProviderError) as caught:
        provider.complete(MESSAGES)

    assert type(caught.value) is expected
    assert caught.value.code == ERROR_CODES[expected]
    # LLM_MAX_RETRIES=0: exactly one attempt.
    assert len(openai_server.requests) == 1


@pytest.mark.parametrize(("answer", "expected", "needs_short_timeout"), FAILURE_PARAMS)
def test_stream_maps_failures_to_provider_errors(
    provider, openai_server, settings, answer, expected, needs_short_timeout
):
    if needs_short_timeout:
        settings.LLM_TIMEOUT_SECONDS = SHORT_TIMEOUT
        provider = get_provider()
    openai_server.queue(answer)

    with pytest.raises(ProviderError) as caught:
        list(provider.stream(MESSAGES))

    assert type(caught.value) is expected
    assert len(openai_server.requests) == 1


@pytest.mark.parametrize(
    ("reset", "transport_error"),
    [(False, httpx2.RemoteProtocolError), (True, httpx2.ReadError)],
    ids=["closed_mid_body", "reset"],
)
def test_stream_cut_off_midway_is_a_provider_error(provider, openai_server, reset, transport_error):
    openai_server.queue(Reply(text="one two three four", chunks=4, cut_after=2, reset=reset))

    received = []
    with pytest.raises(ProviderError) as caught:
        received.extend(provider.stream(MESSAGES))

    assert type(caught.value) is ProviderError
    # httpx2's own error, raised while the stream was read, is in the chain for the log.
    causes = []
    cause = caught.value.__cause__
    while cause is not None:
        causes.append(cause)
        cause = cause.__cause__
    assert any(isinstance(each, transport_error) for each in causes), causes
    # What arrived before the cut was passed on, and no Completion claims the rest.
    assert all(isinstance(item, Delta) for item in received)
    assert "".join(d.text for d in received) == "one two th"


def test_stream_ending_without_done_has_no_finish_reason(provider, openai_server):
    # The body ends properly, but with neither a finish reason nor [DONE]:
    # the SDK raises nothing, and only the missing reason tells the reply
    # was cut short (the run fails on it: test_finish_reason.py).
    openai_server.queue(Reply(text="one two three four", chunks=4, cut_after=2, cut_cleanly=True))

    *deltas, last = provider.stream(MESSAGES)

    assert "".join(d.text for d in deltas) == "one two th"
    assert isinstance(last, Completion)
    assert last.text == "one two th"
    assert last.finish_reason is None


def test_stream_stalling_midway_times_out(provider, openai_server, settings):
    settings.LLM_TIMEOUT_SECONDS = SHORT_TIMEOUT
    provider = get_provider()
    openai_server.queue(Reply(text="first second", chunks=2, chunk_delay=LONGER_THAN_TIMEOUT))

    received = []
    with pytest.raises(ProviderTimeout):
        received.extend(provider.stream(MESSAGES))

    assert [d.text for d in received] == ["first "]


def test_stream_with_malformed_event_is_a_bad_response(provider, openai_server):
    openai_server.queue(Raw(b"data: {not json\n\n", content_type="text/event-stream"))

    with pytest.raises(ProviderBadResponse):
        list(provider.stream(MESSAGES))


# Through the API.


@pytest.fixture
def thread(owner) -> Thread:
    conversation = Conversation.objects.create(user=owner, title="Provider tests")
    return Thread.objects.create(conversation=conversation)


def runs_url(thread: Thread) -> str:
    return f"/api/v1/chatkit/sessions/{thread.conversation_id}/threads/{thread.pk}/runs"


def test_run_with_openai_provider_stores_the_reply(api, thread, openai_settings):
    openai_settings.queue(Reply(text="Bonjour!", prompt_tokens=3, completion_tokens=2))

    response = api.post(runs_url(thread), {"input": "Say hello"}, format="json")

    assert response.status_code == 201
    run = response.json()["data"]
    assert run["status"] == "completed"
    assert run["provider"] == "openai"
    assert run["model"] == TEST_MODEL
    assert run["error"] is None
    assert run["incomplete_details"] is None
    assert run["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    assert run["output_message"]["content"] == "Bonjour!"
    assert run["output_message"]["status"] == "completed"
    [sent] = openai_settings.requests
    assert sent["model"] == TEST_MODEL
    assert sent["messages"] == [{"role": "user", "content": "Say hello"}]


def test_run_cut_short_by_length_keeps_text_as_incomplete(api, thread, openai_settings):
    openai_settings.queue(Reply(text="It was the best of", finish_reason="length"))

    response = api.post(runs_url(thread), {"input": "Tell a story"}, format="json")

    assert response.status_code == 201
    run = response.json()["data"]
    assert run["status"] == "completed"
    assert run["output_message"]["content"] == "It was the best of"
    assert run["output_message"]["status"] == "incomplete"
    assert run["incomplete_details"] == {"reason": "length"}
    assert run["error"] is None
    stored = Message.objects.get(pk=run["output_message"]["id"])
    assert stored.status == Message.Status.INCOMPLETE


@pytest.mark.parametrize(("answer", "expected", "needs_short_timeout"), FAILURE_PARAMS)
def test_provider_failure_fails_the_run_and_frees_the_thread(
    api, thread, openai_settings, settings, caplog, answer, expected, needs_short_timeout
):
    if needs_short_timeout:
        settings.LLM_TIMEOUT_SECONDS = SHORT_TIMEOUT
    openai_settings.queue(answer)

    with caplog.at_level(logging.ERROR):
        response = api.post(runs_url(thread), {"input": "Hello?"}, format="json")

    assert response.status_code == 201
    run = response.json()["data"]
    assert run["status"] == "failed"
    assert run["error"]["code"] == ERROR_CODES[expected]
    assert run["error"]["message"]
    assert run["output_message"] is None
    assert run["completed_at"] is not None
    # Nothing of the provider's own text, nor the key, reaches the client.
    assert UPSTREAM_DETAIL not in response.content.decode()
    assert TEST_API_KEY not in response.content.decode()
    # The user message was kept; no reply pretends to be complete.
    assert run["input_message"]["content"] == "Hello?"
    assert list(Message.objects.filter(thread=thread).values_list("role", "content")) == [
        ("user", "Hello?")
    ]
    assert not Message.objects.filter(
        thread=thread, role="assistant", status=Message.Status.COMPLETED
    ).exists()
    assert Run.objects.get(pk=run["id"]).status == Run.Status.FAILED
    # Logged once, with the stack trace.
    logged = [r for r in caplog.records if r.levelno >= logging.ERROR and run["id"] in r.message]
    assert len(logged) == 1
    assert logged[0].exc_info is not None
    assert isinstance(logged[0].exc_info[1], expected)

    # The thread takes the next run once the provider is healthy again.
    openai_settings.queue(Reply(text="Back again."))
    retry = api.post(runs_url(thread), {"input": "Hello again?"}, format="json")

    assert retry.status_code == 201
    assert retry.json()["data"]["status"] == "completed"
    assert retry.json()["data"]["output_message"]["content"] == "Back again."
