"""Writes sent together in one round trip: committed together, or not at all."""

import pytest
from django.db import IntegrityError, connection, transaction

from conversations.models import Conversation
from conversations.runs import store
from tests.conftest import make_user
from tests.db import count_rows, fetch_row

pytestmark = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="statements are sent together on PostgreSQL only"
)


@pytest.mark.django_db(transaction=True)
def test_statements_sent_together_are_committed_on_return():
    owner = make_user("owner")
    first, second = Conversation(user=owner, title="one"), Conversation(user=owner, title="two")

    store.execute_together([store.insert([first]), store.insert([second])])

    assert fetch_row(Conversation, first.pk)["title"] == "one"
    assert fetch_row(Conversation, second.pk)["title"] == "two"


@pytest.mark.django_db(transaction=True)
def test_a_failing_statement_undoes_the_ones_before_it():
    owner = make_user("owner")
    kept = Conversation.objects.create(user=owner, title="kept")
    new = Conversation(user=owner, title="new")
    duplicate = Conversation(id=kept.pk, user=owner, title="duplicate")

    with pytest.raises(IntegrityError):
        store.execute_together([store.insert([new]), store.insert([duplicate])])

    assert count_rows(Conversation, user=owner.pk) == 1
    assert fetch_row(Conversation, kept.pk)["title"] == "kept"


@pytest.mark.django_db(transaction=True)
def test_refused_inside_a_transaction_that_would_delay_the_commit():
    owner = make_user("owner")

    with pytest.raises(RuntimeError), transaction.atomic():
        store.execute_together([store.insert([Conversation(user=owner)])])

    assert count_rows(Conversation, user=owner.pk) == 0


@pytest.mark.django_db(transaction=True)
def test_update_writes_only_the_named_fields():
    owner = make_user("owner")
    conversation = Conversation.objects.create(user=owner, title="old", instructions="keep")
    conversation.title = "new"
    conversation.instructions = "not saved"

    store.execute_together([store.update(conversation, ["title"])])

    row = fetch_row(Conversation, conversation.pk)
    assert (row["title"], row["instructions"]) == ("new", "keep")


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("holds", [True, False])
def test_conditional_insert_of_several_rows_inserts_all_or_none(holds):
    owner = make_user("owner")
    rows = [Conversation(user=owner, title=f"s{i}", metadata={"i": str(i)}) for i in range(3)]

    store.execute_together([store.insert(rows, where=("%s", [holds]))])

    assert count_rows(Conversation, user=owner.pk) == (3 if holds else 0)
    if holds:
        assert fetch_row(Conversation, rows[2].pk)["metadata"] == {"i": "2"}


@pytest.mark.django_db(transaction=True)
def test_conditional_update_holds_only_if_the_row_was_as_expected():
    owner = make_user("owner")
    conversation = Conversation.objects.create(user=owner, title="old")
    conversation.title = "new"

    missed = store.update(conversation, ["title"], where=("title = %s", ["other"]))
    assert store.execute_together([missed]) == 0
    assert fetch_row(Conversation, conversation.pk)["title"] == "old"

    matched = store.update(conversation, ["title"], where=("title = %s", ["old"]))
    assert store.execute_together([matched]) == 1
    assert fetch_row(Conversation, conversation.pk)["title"] == "new"
