"""Keyset paging of sessions and threads: limit, order, after, before, has_more."""

import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from conversations.models import Conversation, Thread
from conversations.runs.store import rows_beyond

SESSIONS = "/api/v1/chatkit/sessions"
COUNT = 25


def _spread(model, rows: list) -> list[str]:
    """Give rows timestamps in groups of five equal ones, so ties on created_at are
    broken by id, and return their ids newest first, as the API should list them."""
    start = timezone.now() - timedelta(days=1)
    for index, row in enumerate(rows):
        row.created_at = start + timedelta(seconds=index // 5)
        model.objects.filter(pk=row.pk).update(created_at=row.created_at)
    newest_first = sorted(rows, key=lambda row: (row.created_at, row.pk), reverse=True)
    return [str(row.pk) for row in newest_first]


@pytest.fixture(params=["sessions", "threads"])
def listing(request, owner, stranger) -> tuple[str, list[str]]:
    """A list URL and the ids it holds, newest first; plus rows that must not show up."""
    if request.param == "sessions":
        rows = [Conversation.objects.create(user=owner, title=f"s{i}") for i in range(COUNT)]
        Conversation.objects.create(user=stranger)
        return SESSIONS, _spread(Conversation, rows)
    session = Conversation.objects.create(user=owner)
    rows = [Thread.objects.create(conversation=session, title=f"t{i}") for i in range(COUNT)]
    Thread.objects.create(conversation=Conversation.objects.create(user=owner))
    return f"{SESSIONS}/{session.pk}/threads", _spread(Thread, rows)


def page(api, url: str, **query) -> tuple[list[str], dict]:
    response = api.get(url, query)
    assert response.status_code == 200, response.content
    body = response.json()
    return [item["id"] for item in body["data"]], body["pagination"]


def test_default_page_is_twenty_newest_first(api, listing):
    url, expected = listing

    ids, pagination = page(api, url)

    assert ids == expected[:20]
    assert pagination == {"has_more": True, "first_id": expected[0], "last_id": expected[19]}


def test_limit(api, listing):
    url, expected = listing

    ids, pagination = page(api, url, limit=3)

    assert ids == expected[:3]
    assert pagination == {"has_more": True, "first_id": expected[0], "last_id": expected[2]}


@pytest.mark.parametrize("limit", [COUNT, 100])
def test_page_holding_everything_has_no_more(api, listing, limit):
    url, expected = listing

    ids, pagination = page(api, url, limit=limit)

    assert ids == expected
    assert pagination["has_more"] is False


def test_limit_one_is_allowed(api, listing):
    url, expected = listing

    ids, _ = page(api, url, limit=1)

    assert ids == expected[:1]


def test_after_walks_forward_without_gaps_or_duplicates(api, listing):
    url, expected = listing
    seen, has_more_flags = [], []

    ids, pagination = page(api, url, limit=7)
    while True:
        seen += ids
        has_more_flags.append(pagination["has_more"])
        if not pagination["has_more"]:
            break
        ids, pagination = page(api, url, limit=7, after=pagination["last_id"])

    assert seen == expected
    assert has_more_flags == [True, True, True, False]


def test_before_walks_back(api, listing):
    url, expected = listing
    last_page, pagination = page(api, url, limit=7, after=expected[17])
    assert last_page == expected[18:]
    pages = []

    while True:
        ids, pagination = page(api, url, limit=7, before=pagination["first_id"])
        pages.insert(0, ids)
        if not pagination["has_more"]:
            break

    assert [len(p) for p in pages] == [4, 7, 7]
    assert [item for p in pages for item in p] == expected[:18]


def test_before_the_first_item_is_empty(api, listing):
    url, expected = listing

    ids, pagination = page(api, url, before=expected[0])

    assert ids == []
    assert pagination == {"has_more": False, "first_id": None, "last_id": None}


def test_after_the_last_item_is_empty(api, listing):
    url, expected = listing

    ids, pagination = page(api, url, after=expected[-1])

    assert ids == []
    assert pagination == {"has_more": False, "first_id": None, "last_id": None}


def test_after_and_before_together_give_the_items_between(api, listing):
    url, expected = listing

    ids, pagination = page(api, url, after=expected[3], before=expected[10])

    assert ids == expected[4:10]
    assert pagination["has_more"] is False


def test_order_asc_walks_oldest_first(api, listing):
    url, expected = listing
    oldest_first = expected[::-1]
    seen = []

    ids, pagination = page(api, url, order="asc", limit=10)
    while True:
        seen += ids
        if not pagination["has_more"]:
            break
        ids, pagination = page(api, url, order="asc", limit=10, after=pagination["last_id"])

    assert seen == oldest_first


def test_order_asc_with_before(api, listing):
    url, expected = listing
    oldest_first = expected[::-1]

    ids, pagination = page(api, url, order="asc", limit=5, before=oldest_first[12])

    assert ids == oldest_first[7:12]
    assert pagination["has_more"] is True


def test_order_desc_explicitly_is_the_default(api, listing):
    url, expected = listing

    assert page(api, url, order="desc", limit=5)[0] == expected[:5]


def test_item_created_between_pages_neither_shifts_nor_repeats(api, owner):
    sessions = [Conversation.objects.create(user=owner) for _ in range(6)]
    expected = _spread(Conversation, sessions)
    first, pagination = page(api, SESSIONS, limit=3)

    newest = Conversation.objects.create(user=owner)
    second, _ = page(api, SESSIONS, limit=3, after=pagination["last_id"])

    assert first + second == expected
    assert str(newest.pk) not in first + second


@pytest.mark.parametrize("cursor", ["after", "before"])
@pytest.mark.parametrize("value", [str(uuid.uuid4()), "not-a-uuid", ""])
def test_a_cursor_not_in_the_list_is_400(api, listing, cursor, value):
    url, _ = listing

    response = api.get(url, {cursor: value})

    assert response.status_code == 400, response.content
    assert response.json()["error"]["details"] == {cursor: ["No item with this id in the list."]}


def test_one_good_and_one_missing_cursor_is_400_naming_the_missing_one(api, listing):
    url, expected = listing

    response = api.get(url, {"after": expected[3], "before": str(uuid.uuid4())})

    assert response.status_code == 400, response.content
    assert list(response.json()["error"]["details"]) == ["before"]


def test_cursor_condition_keeps_to_the_lists_parent(owner, stranger):
    """The cursor's position is looked up among the children of the list's parent:
    a cursor of another parent makes the page empty."""
    session = Conversation.objects.create(user=owner)
    rows = [Thread.objects.create(conversation=session, title=f"t{i}") for i in range(10)]
    expected = [uuid.UUID(pk) for pk in _spread(Thread, rows)]
    foreign = Thread.objects.create(conversation=Conversation.objects.create(user=stranger))
    newest_first = Thread.objects.filter(conversation=session).order_by("-created_at", "-id")
    parent = ("conversation", session.pk)

    def ids(cursor, descending):
        return list(
            newest_first.filter(rows_beyond(Thread, cursor, descending, parent)).values_list(
                "pk", flat=True
            )
        )

    assert ids(expected[2], True) == expected[3:]
    assert ids(expected[7], False) == expected[:7]
    assert ids(foreign.pk, True) == []
    assert ids(foreign.pk, False) == []
