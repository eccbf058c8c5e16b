"""The OpenAPI document's list of event names is the one a streamed run sends."""

import itertools

import pytest

from chatkit.schema import EVENT_NAMES, RUN_EVENT_SCHEMA
from tests.sse import runs_path, streamed_events

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_streamed_run_sends_the_documented_names_in_order(api, thread):
    response = api.post(runs_path(thread), {"input": "Hello", "stream": True}, format="json")
    assert response.status_code == 200
    names = [name for name, _ in itertools.groupby(e.event for e in streamed_events(response))]
    # The four ends come last in the list; this run completes.
    assert names == [*EVENT_NAMES[:-4], "run.completed", "done"]


def test_the_event_schema_names_every_event_once():
    documented = [
        name
        for variant in RUN_EVENT_SCHEMA["oneOf"]
        for name in variant["properties"]["event"]["enum"]
    ]
    assert sorted(documented) == sorted([*EVENT_NAMES, "done"])
