"""The serializers describe the documents that documents.py renders: the same keys, in order."""

import pytest

from chatkit.serializers import (
    MessageSerializer,
    RunSerializer,
    SessionSerializer,
    ThreadSerializer,
)
from conversations.documents import (
    message_document,
    run_document,
    session_document,
    thread_document,
)
from conversations.models import Run


@pytest.fixture
def run(api, thread) -> Run:
    response = api.post(
        f"/api/v1/chatkit/sessions/{thread.conversation_id}/threads/{thread.id}/runs",
        {"input": "Hello"},
        format="json",
    )
    assert response.status_code == 201, response.content
    return Run.objects.select_related("thread", "input_message", "output_message").get()


def test_session_serializer_fields_are_the_document_keys(session):
    assert list(SessionSerializer().fields) == list(session_document(session))


def test_thread_serializer_fields_are_the_document_keys(thread):
    assert list(ThreadSerializer().fields) == list(thread_document(thread))


def test_message_serializer_fields_are_the_document_keys(run):
    assert list(MessageSerializer().fields) == list(message_document(run.output_message))


def test_run_serializer_fields_are_the_document_keys(run):
    document = run_document(run)
    assert list(RunSerializer().fields) == list(document)
    assert RunSerializer(run).data == document
