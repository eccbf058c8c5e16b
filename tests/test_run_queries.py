"""Query counts of the runs endpoints: fixed, and independent of the page size.

Counted inside the test's transaction, so each service transaction shows up
as a SAVEPOINT / RELEASE SAVEPOINT pair (BEGIN and COMMIT outside tests).
"""

import pytest
from django.db import connection

from conversations.models import Conversation, Thread

# Counted with the token's user looked up (no cached user): the cold cost.
pytestmark = pytest.mark.usefixtures("cold_auth_cache")


@pytest.fixture
def thread(owner) -> Thread:
    # Custom titles: the first run renames neither the session nor the thread.
    conversation = Conversation.objects.create(user=owner, title="Pinned", instructions="Hi.")
    return Thread.objects.create(conversation=conversation, title="Pinned")


def thread_url(thread: Thread) -> str:
    return f"/api/v1/chatkit/sessions/{thread.conversation_id}/threads/{thread.pk}"


@pytest.fixture
def thread_with_runs(api, thread) -> Thread:
    for n in range(6):
        response = api.post(f"{thread_url(thread)}/runs", {"input": f"Turn {n}"}, format="json")
        assert response.status_code == 201
    return thread


def test_synchronous_run_post_queries(api, thread, django_assert_num_queries):
    # 1 SELECT user (token authentication)
    # 2 SELECT thread JOIN session, the user's own and the URL's
    # run_start, one transaction:
    #   PostgreSQL: 3 SAVEPOINT, 4 SELECT the user FOR NO KEY UPDATE; INSERT
    #   run if the user has fewer than MAX_ACTIVE_RUNS_PER_USER active runs;
    #   INSERT user message; INSERT run events (run.created, message.created,
    #   run.in_progress), sent together (store.insert_run),
    #   5 RELEASE SAVEPOINT. In production there is no savepoint: the
    #   statements are their own transaction.
    #   SQLite: 3 SAVEPOINT, 4 COUNT the user's active runs (up to the
    #   limit), 5 INSERT user message, 6 INSERT run events, 7 INSERT run,
    #   8 RELEASE SAVEPOINT
    # then the newest messages (the provider's context): one SELECT
    # the reply and the final status:
    #   PostgreSQL: SAVEPOINT, one statement (UPDATE run if still in
    #   progress as the executor left it; INSERT assistant message and run
    #   events (message.delta, message.completed, run.completed) if it was),
    #   RELEASE SAVEPOINT; in production the statement is its own transaction
    #   SQLite: SAVEPOINT, SELECT run FOR UPDATE, INSERT assistant message,
    #   INSERT run events, UPDATE run, RELEASE SAVEPOINT
    with django_assert_num_queries(9 if connection.vendor == "postgresql" else 15):
        response = api.post(f"{thread_url(thread)}/runs", {"input": "Hello"}, format="json")

    assert response.status_code == 201
    assert response.json()["data"]["status"] == "completed"


def test_first_run_of_a_new_chat_adds_only_the_rename(api, owner, django_assert_num_queries):
    thread = Thread.objects.create(conversation=Conversation.objects.create(user=owner))

    # The queries above, plus the session's and the thread's UPDATEs to
    # their new titles in run_start's transaction: statements of their own
    # on SQLite, sent with the inserts on PostgreSQL.
    with django_assert_num_queries(9 if connection.vendor == "postgresql" else 17):
        response = api.post(f"{thread_url(thread)}/runs", {"input": "Hello"}, format="json")

    assert response.status_code == 201
    thread.refresh_from_db()
    thread.conversation.refresh_from_db()
    assert (thread.conversation.title, thread.title) == ("Hello", "Hello")


@pytest.mark.parametrize("limit", [1, 6, 100])
def test_runs_list_queries_do_not_grow_with_the_page(
    api, thread_with_runs, django_assert_num_queries, limit
):
    # user, thread JOIN session, runs with both their messages (one JOIN)
    with django_assert_num_queries(3):
        response = api.get(f"{thread_url(thread_with_runs)}/runs", {"limit": limit})

    assert response.status_code == 200
    runs = response.json()["data"]
    assert len(runs) == min(limit, 6)
    assert all(run["output_message"]["content"].startswith("Echo: ") for run in runs)


def test_runs_list_after_a_cursor_adds_no_query(api, thread_with_runs, django_assert_num_queries):
    first = api.get(f"{thread_url(thread_with_runs)}/runs", {"limit": 2}).json()

    # user, thread JOIN session, the page (the cursor's position a subquery)
    with django_assert_num_queries(3):
        response = api.get(
            f"{thread_url(thread_with_runs)}/runs",
            {"limit": 3, "after": first["pagination"]["last_id"]},
        )

    assert len(response.json()["data"]) == 3


@pytest.mark.parametrize("limit", [1, 12, 100])
def test_messages_list_queries_do_not_grow_with_the_page(
    api, thread_with_runs, django_assert_num_queries, limit
):
    # user, thread JOIN session, messages
    with django_assert_num_queries(3):
        response = api.get(f"{thread_url(thread_with_runs)}/messages", {"limit": limit})

    assert response.status_code == 200
    assert len(response.json()["data"]) == min(limit, 12)


def test_messages_list_filtered_by_run_queries(api, thread_with_runs, django_assert_num_queries):
    run_id = api.get(f"{thread_url(thread_with_runs)}/runs").json()["data"][0]["id"]

    # user, thread JOIN session, messages of the run
    with django_assert_num_queries(3):
        response = api.get(f"{thread_url(thread_with_runs)}/messages", {"run_id": run_id})

    assert [m["role"] for m in response.json()["data"]] == ["user", "assistant"]
