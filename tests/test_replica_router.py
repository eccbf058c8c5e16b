"""The read-replica router: reads go to "replica" only inside replica_reads(), and only
when one is configured; writes and migrations stay on the primary.

DATABASES is patched to name a replica for the router's check only: no test
here opens a connection to it.
"""

import os
import subprocess
import sys
import threading

import pytest
from django.conf import settings as django_settings
from django.db import router

from accounts.models import User
from conversations.db_router import ReplicaRouter, replica_reads
from conversations.models import Conversation, Message, Run, Thread

MODELS = [Conversation, Thread, Message, Run, User]

# Overriding DATABASES warns (connections are not rebuilt); that is the point here.
pytestmark = pytest.mark.filterwarnings("ignore:Overriding setting DATABASES")


@pytest.fixture
def with_replica(settings):
    settings.DATABASES = {
        **settings.DATABASES,
        "replica": {**settings.DATABASES["default"], "TEST": {"MIRROR": "default"}},
    }


@pytest.fixture
def without_replica(settings):
    settings.DATABASES = {"default": settings.DATABASES["default"]}


@pytest.mark.usefixtures("with_replica")
@pytest.mark.parametrize("model", MODELS)
def test_reads_outside_replica_reads_go_to_default(model):
    assert ReplicaRouter().db_for_read(model) is None
    assert router.db_for_read(model) == "default"
    assert model.objects.all().db == "default"


@pytest.mark.usefixtures("with_replica")
@pytest.mark.parametrize("model", MODELS)
def test_reads_inside_replica_reads_go_to_the_replica(model):
    with replica_reads():
        assert ReplicaRouter().db_for_read(model) == "replica"
        assert router.db_for_read(model) == "replica"
        assert model.objects.all().db == "replica"
    assert router.db_for_read(model) == "default"


@pytest.mark.usefixtures("without_replica")
@pytest.mark.parametrize("model", MODELS)
def test_reads_inside_replica_reads_go_to_default_without_a_replica(model):
    with replica_reads():
        assert ReplicaRouter().db_for_read(model) is None
        assert router.db_for_read(model) == "default"
        assert model.objects.all().db == "default"


@pytest.mark.usefixtures("with_replica")
@pytest.mark.parametrize("model", MODELS)
def test_writes_always_go_to_default(model):
    assert ReplicaRouter().db_for_write(model) == "default"
    with replica_reads():
        assert ReplicaRouter().db_for_write(model) == "default"
        assert router.db_for_write(model) == "default"
        assert router.db_for_write(model, instance=model()) == "default"


@pytest.mark.usefixtures("with_replica")
def test_the_replica_is_left_when_the_block_raises():
    seen = []

    def read_then_fail():
        with replica_reads():
            seen.append(router.db_for_read(Conversation))
            raise RuntimeError

    with pytest.raises(RuntimeError):
        read_then_fail()

    assert seen == ["replica"]
    assert router.db_for_read(Conversation) == "default"


@pytest.mark.usefixtures("with_replica")
def test_nested_blocks_restore_the_outer_state():
    with replica_reads():
        with replica_reads():
            assert router.db_for_read(Thread) == "replica"
        assert router.db_for_read(Thread) == "replica"
    assert router.db_for_read(Thread) == "default"


@pytest.mark.usefixtures("with_replica")
def test_replica_reads_do_not_leak_into_other_threads():
    seen = []
    with replica_reads():
        other = threading.Thread(target=lambda: seen.append(router.db_for_read(Message)))
        other.start()
        other.join()
    assert seen == ["default"]


@pytest.mark.parametrize("app_label", ["conversations", "accounts", "chatkit", "auth"])
def test_migrations_only_on_default(app_label):
    assert ReplicaRouter().allow_migrate("default", app_label) is True
    assert ReplicaRouter().allow_migrate("replica", app_label) is False
    assert ReplicaRouter().allow_migrate("replica", app_label, model_name="run") is False


def test_relations_are_allowed_across_aliases():
    assert ReplicaRouter().allow_relation(Conversation(), Thread()) is True


def test_router_is_configured():
    assert django_settings.DATABASE_ROUTERS == ["conversations.db_router.ReplicaRouter"]


# Which reads of a request go to the replica -----------------------------------


@pytest.fixture
def read_log(monkeypatch, with_replica):
    """(model, replica?) for every read the router is asked about; all served by default."""
    log: list[tuple[str, bool]] = []
    original = ReplicaRouter.db_for_read

    def spy(self, model, **hints):
        log.append((model.__name__, original(self, model, **hints) == "replica"))
        return None

    monkeypatch.setattr(ReplicaRouter, "db_for_read", spy)
    return log


def test_thread_list_resolves_its_session_on_the_primary_and_pages_on_the_replica(
    api, owner, read_log
):
    session = Conversation.objects.create(user=owner)
    Thread.objects.create(conversation=session)
    read_log.clear()

    response = api.get(f"/api/v1/chatkit/sessions/{session.pk}/threads")

    assert response.status_code == 200
    assert len(response.json()["data"]) == 1
    assert ("Conversation", True) not in read_log
    assert ("Conversation", False) in read_log
    assert ("Thread", True) in read_log
    assert ("Thread", False) not in read_log
    assert ("User", True) not in read_log


def test_chatkit_lists_resolve_their_parent_on_the_primary_and_page_on_the_replica(
    api, owner, read_log
):
    session = Conversation.objects.create(user=owner)
    thread = Thread.objects.create(conversation=session)
    Message.objects.create(thread=thread, role="user", content="hi")
    url = f"/api/v1/chatkit/sessions/{session.pk}/chatkit"
    read_log.clear()

    threads = api.post(url, {"type": "threads.list", "params": {}}, format="json")
    items = api.post(
        url, {"type": "items.list", "params": {"thread_id": str(thread.pk)}}, format="json"
    )

    assert (threads.status_code, items.status_code) == (200, 200)
    assert len(items.json()["data"]) == 1
    assert ("Conversation", False) in read_log
    assert ("Thread", True) in read_log
    assert ("Message", True) in read_log
    assert ("Message", False) not in read_log
    assert ("User", True) not in read_log


def test_a_chatkit_thread_with_its_items_stays_on_the_primary(api, owner, read_log):
    session = Conversation.objects.create(user=owner)
    thread = Thread.objects.create(conversation=session)
    read_log.clear()

    fetched = api.post(
        f"/api/v1/chatkit/sessions/{session.pk}/chatkit",
        {"type": "threads.get_by_id", "params": {"thread_id": str(thread.pk)}},
        format="json",
    )

    assert fetched.status_code == 200
    assert read_log
    assert not [entry for entry in read_log if entry[1]]


def test_single_object_reads_stay_on_the_primary(api, owner, read_log):
    session = Conversation.objects.create(user=owner)
    thread = Thread.objects.create(conversation=session)
    read_log.clear()

    assert api.get(f"/api/v1/chatkit/sessions/{session.pk}").status_code == 200
    assert api.get(f"/api/v1/chatkit/sessions/{session.pk}/threads/{thread.pk}").status_code == 200

    assert read_log
    assert not [entry for entry in read_log if entry[1]]


def test_manage_check_passes_with_a_replica_configured():
    url = os.environ.get("DATABASE_URL") or f"sqlite:///{django_settings.BASE_DIR / 'db.sqlite3'}"
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "DATABASE_REPLICA_URL": url,
        "SECRET_KEY": os.environ.get("SECRET_KEY") or "test-only-key-" + "x" * 40,
    }

    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=django_settings.BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert "System check identified no issues" in result.stdout
