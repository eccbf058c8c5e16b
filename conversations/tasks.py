"""Background work, through Django's Tasks API: the engine is a setting (TASKS)."""

import logging

from django.conf import settings
from django.dispatch import Signal
from django_tasks import task

from .models import Run
from .providers import get_provider
from .runs.execute import run_execute
from .runs.lifecycle import run_claim

logger = logging.getLogger(__name__)

# Sent by the worker every maintenance round, with ``hourly`` True about once
# an hour: the other apps drop their expired records then.
maintenance = Signal()
# Sent once by the worker as it starts, before it takes tasks: the other apps
# start what they run beside it (the HTTP layer, its metrics listener). A
# receiver returns a line for the worker to print, or None.
worker_starting = Signal()


@task()
def execute_run(run_id: str) -> None:
    """Carry out a queued run. A second delivery of the same run does nothing."""
    # The provider first: a configuration error raises before the run is
    # claimed, instead of leaving it in progress until its lease runs out.
    provider = get_provider()
    run = run_claim(run_id=run_id)
    if run is None:
        logger.info("Run %s is not queued any more; nothing to do", run_id)
        return
    # Which worker carries which run, for an operator with several workers
    # (and for tests/test_fleet.py, which reads it).
    logger.info("Carrying out run %s", run_id)
    for _event in run_execute(run=run, provider=provider, stream=True):
        pass


def enqueue_run(run: Run) -> None:
    """Hand a queued run to the task engine (called on commit by ``run_start``)."""
    execute_run.enqueue(run_id=str(run.pk))


def configured_huey():
    """The huey instance when huey is the task engine, else None."""
    if "djhuey" not in settings.TASKS["default"]["BACKEND"]:
        return None
    from huey.contrib.djhuey import HUEY

    return HUEY


def prepare_task_queue() -> None:
    """Create the huey queue's tables when huey keeps them in a SQL database."""
    huey = configured_huey()
    initialize = getattr(huey.storage, "initialize_schema", None) if huey else None
    if initialize is not None:
        initialize()


def prune_task_results() -> None:
    """Drop the result records huey keeps for every task; nothing reads them.

    Records of tasks in flight go too, which only skips their bookkeeping: the
    run row, not the task record, is the source of truth.
    """
    huey = configured_huey()
    if huey is not None:
        huey.storage.flush_results()
