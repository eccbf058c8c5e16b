"""How a run's stored events become ChatKit's (protocol_stream.TurnTranslator), end by end.

The streams themselves are tested over HTTP (test_chatkit_stream.py); here
the ends that are hard to bring about there: a run that expired, and a
stream whose run never ended (its executor crashed).
"""

import uuid

from django.utils import timezone

from chatkit.protocol_stream import TurnTranslator, frames
from conversations.models import Thread
from conversations.runs import Event

THREAD = Thread(id=uuid.uuid4(), title="Named", created_at=timezone.now())
REPLY = uuid.uuid4()


def translate(names_and_data, *, renamed: bool = False) -> list[dict]:
    translator = TurnTranslator(thread=THREAD, reply_id=REPLY, created=None, renamed=renamed)
    out = []
    for seq, (name, data) in enumerate(names_and_data, start=1):
        out += translator.translate(Event(seq, name, data))
    return out + translator.closing(thread_deleted=False)


def reply_document(text: str) -> dict:
    return {
        "id": str(REPLY),
        "thread_id": str(THREAD.id),
        "role": "assistant",
        "content": text,
        "created_at": "2026-02-07T10:32:00Z",
    }


def test_an_expired_run_is_an_error_after_the_text_so_far():
    events = translate(
        [
            ("run.in_progress", {}),
            ("message.delta", {"message_id": str(REPLY), "delta": "Half"}),
            ("message.completed", reply_document("Half")),
            ("run.expired", {}),
        ]
    )

    assert [event["type"] for event in events] == [
        "stream_options",
        "thread.item.added",
        "thread.item.updated",
        "thread.item.updated",
        "thread.item.updated",
        "thread.item.done",
        "error",
    ]
    assert events[-1] == {"type": "error", "code": "stream.error", "allow_retry": True}


def test_a_stream_whose_run_never_ended_closes_with_an_error_and_the_new_title():
    events = translate(
        [("run.in_progress", {}), ("message.delta", {"message_id": str(REPLY), "delta": "x"})],
        renamed=True,
    )

    assert [event["type"] for event in events[-2:]] == ["error", "thread.updated"]
    assert events[-1]["thread"]["title"] == "Named"


def test_a_cancelled_run_without_text_removes_its_empty_reply():
    events = translate([("run.in_progress", {}), ("run.cancelled", {})])

    assert events[-1] == {"type": "thread.item.removed", "item_id": str(REPLY)}


def test_frames_are_one_data_line_each():
    body = frames([{"type": "a", "text": "two\nlines"}, {"type": "b"}])

    assert body == b'data: {"type":"a","text":"two\\nlines"}\n\ndata: {"type":"b"}\n\n'
