"""What the provider sees of a long thread: the newest messages within both budgets."""

from collections.abc import Iterator
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from conversations import runs
from conversations.llm import ChatMessage, Completion, Delta, Usage
from conversations.models import Conversation, Message, Run, Thread

HISTORY = 3000
CONTENT_LENGTH = 100


class RecordingProvider:
    """Remembers the messages of every call and answers with a fixed reply."""

    name = "recording"
    model = "recording-1"

    def __init__(self) -> None:
        self.calls: list[list[ChatMessage]] = []

    def complete(self, messages: list[ChatMessage]) -> Completion:
        self.calls.append(list(messages))
        return Completion(text="Noted.", usage=Usage(prompt_tokens=1, completion_tokens=1))

    def stream(self, messages: list[ChatMessage]) -> Iterator[Delta | Completion]:
        completion = self.complete(messages)
        yield Delta(completion.text)
        yield completion


@pytest.fixture
def long_thread(owner) -> Thread:
    """A thread of 3,000 alternating messages of 100 characters, oldest first."""
    conversation = Conversation.objects.create(user=owner, title="Long", instructions="Be kind.")
    thread = Thread.objects.create(conversation=conversation)
    start = timezone.now() - timedelta(days=1)
    Message.objects.bulk_create(
        Message(
            thread=thread,
            role="user" if index % 2 == 0 else "assistant",
            content=f"message {index:04d} ".ljust(CONTENT_LENGTH, "."),
            created_at=start + timedelta(seconds=index),
        )
        for index in range(HISTORY)
    )
    return thread


def history(thread: Thread) -> list[tuple[str, str]]:
    """The thread's messages, oldest first, as (role, content)."""
    return list(Message.objects.filter(thread=thread).values_list("role", "content"))


def context_for(thread: Thread, text: str, **options) -> list[ChatMessage]:
    """Start a run with ``text`` and return what the provider was given."""
    provider = RecordingProvider()
    run = runs.run_start(
        thread=thread, input=text, provider=provider.name, model=provider.model, **options
    )
    for _event in runs.run_execute(run=run, provider=provider, stream=False):
        pass
    [messages] = provider.calls
    assert Run.objects.get(pk=run.pk).status == Run.Status.COMPLETED
    return messages


def newest_within(items: list[tuple[str, str]], max_messages: int, max_chars: int) -> list:
    """The longest run of newest items within both budgets (the newest one always)."""
    kept, used = [], 0
    for item in reversed(items):
        used += len(item[1])
        if kept and (used > max_chars or len(kept) == max_messages):
            break
        kept.append(item)
    return kept[::-1]


def test_message_budget_keeps_the_newest_in_order(long_thread, settings):
    settings.LLM_CONTEXT_MAX_MESSAGES = 20
    settings.LLM_CONTEXT_MAX_CHARS = 1_000_000

    pool = [*history(long_thread), ("user", "What did we say last?")]

    sent = context_for(long_thread, "What did we say last?")

    system, *rest = sent
    assert system == ChatMessage(role="system", content="Be kind.")
    assert len(rest) == 20
    assert [(m.role, m.content) for m in rest] == pool[-20:]
    assert rest[-1] == ChatMessage(role="user", content="What did we say last?")
    assert rest[0].content.startswith("message 2981 ")


def test_char_budget_keeps_the_newest_that_fit(long_thread, settings):
    settings.LLM_CONTEXT_MAX_MESSAGES = 50
    settings.LLM_CONTEXT_MAX_CHARS = 1_000

    pool = [*history(long_thread), ("user", "Short question?")]

    sent = context_for(long_thread, "Short question?", instructions="Answer briefly.")

    system, *rest = sent
    assert system == ChatMessage(role="system", content="Answer briefly.")
    assert all(m.role != "system" for m in rest)
    assert sum(len(m.content) for m in rest) <= 1_000
    # The input (15 chars) and nine 100-char messages fit; a tenth would not.
    assert len(rest) == 10
    assert [(m.role, m.content) for m in rest] == newest_within(pool, 50, 1_000)
    assert rest[-1] == ChatMessage(role="user", content="Short question?")


@pytest.mark.parametrize(
    ("max_messages", "max_chars"), [(1, 1_000_000), (7, 450), (50, 2_550), (100, 100_000)]
)
def test_context_is_the_newest_messages_within_both_budgets(
    long_thread, settings, max_messages, max_chars
):
    settings.LLM_CONTEXT_MAX_MESSAGES = max_messages
    settings.LLM_CONTEXT_MAX_CHARS = max_chars

    pool = [*history(long_thread), ("user", "And now?")]

    _system, *rest = context_for(long_thread, "And now?")

    assert [(m.role, m.content) for m in rest] == newest_within(pool, max_messages, max_chars)
    assert len(rest) <= max_messages
    assert sum(len(m.content) for m in rest) <= max_chars


def test_newest_message_is_sent_even_when_it_alone_exceeds_the_budget(long_thread, settings):
    settings.LLM_CONTEXT_MAX_MESSAGES = 50
    settings.LLM_CONTEXT_MAX_CHARS = 1_000
    huge = "word " * 1_000

    sent = context_for(long_thread, huge)

    assert sent == [
        ChatMessage(role="system", content="Be kind."),
        ChatMessage(role="user", content=huge),
    ]


def test_context_reads_a_bounded_number_of_rows(long_thread, settings):
    settings.LLM_CONTEXT_MAX_MESSAGES = 20
    run = runs.run_start(thread=long_thread, input="Hi", provider="echo", model="echo-1")

    with CaptureQueriesContext(connection) as queries:
        messages = runs.run_context(run=run)

    assert len(messages) == 21
    table = Message._meta.db_table
    reads = [q["sql"] for q in queries.captured_queries if table in q["sql"]]
    assert reads
    assert all("LIMIT 20" in sql for sql in reads), reads
