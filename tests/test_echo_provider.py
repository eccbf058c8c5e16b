"""The offline echo provider: its reply, and its timing when ``ECHO_DELAY_MS`` is set."""

import pytest

from conversations.llm import ChatMessage, Completion, Delta
from conversations.providers import echo


class FakeClock:
    """``time.monotonic`` and ``time.sleep`` for the provider, with no real waiting."""

    def __init__(self):
        self.now = 100.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(round(seconds, 6))
        self.now += seconds


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(echo.time, "monotonic", fake.monotonic)
    monkeypatch.setattr(echo.time, "sleep", fake.sleep)
    return fake


def read(provider: echo.EchoProvider, text: str, clock: FakeClock, reader_busy: float) -> list:
    """Stream a reply, the reader spending ``reader_busy`` seconds on each piece."""
    items = []
    for item in provider.stream([ChatMessage(role="user", content=text)]):
        items.append(item)
        clock.now += reader_busy
    return items


def test_reply_is_the_message_in_one_piece_per_word(clock):
    items = read(echo.EchoProvider(), "one two  three", clock, reader_busy=0)

    assert [item.text for item in items if isinstance(item, Delta)] == [
        "Echo: ",
        "one ",
        "two  ",
        "three",
    ]
    assert isinstance(items[-1], Completion)
    assert items[-1].text == "Echo: one two  three"
    assert clock.sleeps == []


def test_pieces_come_at_the_pace_of_the_delay(clock):
    read(echo.EchoProvider(delay_ms=40), "a b c d", clock, reader_busy=0)

    assert clock.sleeps == [0.04, 0.04, 0.04, 0.04]


def test_a_slow_reader_finds_the_pieces_waiting_and_no_time_is_added(clock):
    """Pieces are due at 0, 40, 80, 120 and 160 ms; the reader is busy 100 ms on the first."""
    started = clock.now
    items = []
    provider = echo.EchoProvider(delay_ms=40)
    for item in provider.stream([ChatMessage(role="user", content="a b c d")]):
        items.append(item)
        if len(items) == 1:
            clock.now += 0.1

    # The second and third pieces were waiting; then the pace is the model's again.
    assert clock.sleeps == [0.02, 0.04]
    assert clock.now - started == pytest.approx(0.16)
