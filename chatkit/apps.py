from django.apps import AppConfig


def purge_keys(*, hourly: bool, **kwargs) -> None:
    """Drop expired idempotency records, every worker maintenance round."""
    from .idempotency import purge_expired_keys

    purge_expired_keys()


def serve_worker_metrics(**kwargs) -> str | None:
    """The worker's own /metrics listener, when WORKER_METRICS_BIND and METRICS_TOKEN are set."""
    from .metrics import serve_metrics

    return serve_metrics()


class ChatkitConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "chatkit"

    def ready(self) -> None:
        from conversations.tasks import maintenance, worker_starting

        maintenance.connect(purge_keys, dispatch_uid="chatkit.purge_keys")
        worker_starting.connect(serve_worker_metrics, dispatch_uid="chatkit.worker_metrics")
