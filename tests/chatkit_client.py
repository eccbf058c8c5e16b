"""A small client of the ChatKit endpoint for tests, over Django's test client or real HTTP.

``call`` posts one request; ``frames`` and ``answer`` read a turn's events or
a JSON answer. With ``CHATKIT_TRANSCRIPTS=<file>`` in the environment, every
request and what came back are appended to that file as JSON lines
(``{"request", "status", "json"}`` or ``{"request", "status", "events"}``),
for checking the shapes against the ``openai-chatkit`` package from another
interpreter (this project's app is also called ``chatkit``).
"""

import json
import os
from typing import Any

from rest_framework.test import APIClient

from tests.sse import SSEEvent, SSEStream, bearer, parse_body

TRANSCRIPTS_ENV = "CHATKIT_TRANSCRIPTS"


def chatkit_path(session_id: Any) -> str:
    return f"/api/v1/chatkit/sessions/{session_id}/chatkit"


def user_input(text: str, **extra: Any) -> dict[str, Any]:
    """A ``UserMessageInput`` as ChatKit JS sends it."""
    return {
        "content": [{"type": "input_text", "text": text}],
        "attachments": [],
        "inference_options": {},
        **extra,
    }


def request_body(kind: str, params: dict | None = None, **extra: Any) -> dict[str, Any]:
    return {"type": kind, "params": {} if params is None else params, **extra}


def call(api: APIClient, session_id: Any, kind: str, params: dict | None = None, **extra: Any):
    """POST one ChatKit request through Django's test client; the response."""
    body = request_body(kind, params, **extra)
    response = api.post(chatkit_path(session_id), body, format="json")
    response.chatkit_request = body
    return response


def record(body: dict, status: int, **answer: Any) -> None:
    path = os.environ.get(TRANSCRIPTS_ENV)
    if not path:
        return
    with open(path, "a", encoding="utf-8") as transcript:
        transcript.write(json.dumps({"request": body, "status": status, **answer}) + "\n")


def frames(response) -> list[dict[str, Any]]:
    """The ChatKit events of a streamed answer (test client), read to its end."""
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/event-stream")
    try:
        body = b"".join(response.streaming_content)
    finally:
        response.close()
    events = [item.data for item in parse_body(body) if isinstance(item, SSEEvent)]
    record(response.chatkit_request, response.status_code, events=events)
    return events


def answer(response, status: int = 200) -> dict[str, Any]:
    """The JSON of an answer (test client), expected with ``status``."""
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json")
    data = response.json()
    record(response.chatkit_request, response.status_code, json=data)
    return data


def types(events: list[dict[str, Any]]) -> list[str]:
    """Event types, with a thread.item.updated's update type after a colon."""
    return [
        f"{event['type']}:{event['update']['type'].rsplit('.', 1)[-1]}"
        if event["type"] == "thread.item.updated"
        else event["type"]
        for event in events
    ]


def delta_text(events: list[dict[str, Any]]) -> str:
    return "".join(
        event["update"]["delta"]
        for event in events
        if event["type"] == "thread.item.updated"
        and event["update"]["type"] == "assistant_message.content_part.text_delta"
    )


class ChatKitStream(SSEStream):
    """A turn over real HTTP, read event by event (``next_event().data`` is the ChatKit event)."""

    def __init__(self, base_url: str, user, session_id: Any, body: dict[str, Any]) -> None:
        self.chatkit_request = body
        super().__init__(
            base_url + chatkit_path(session_id), method="POST", headers=bearer(user), body=body
        )

    def read_all(self, deadline: float = 30.0) -> list[SSEEvent]:
        events = super().read_all(deadline)
        record(self.chatkit_request, self.status, events=[event.data for event in events])
        return events

    def chatkit_events(self) -> list[dict[str, Any]]:
        return [event.data for event in self.events()]
