"""Every read and write of the studio database, as keyword-only functions of an `Engine` (database.py makes
the engine: `store.make_engine(url)`, then `store.upgrade(engine=...)` on start). Callers write
`from wmtp_studio import store` and `store.claim_next_run(engine=..., ...)`; each module here owns one part:

- submission.py: saved recipes, comparison sets, and adding runs (`submission`, one transaction);
- runs.py: reading runs, the user's intents (cancel, priority, retry), dependencies;
- leases.py: claims, leases, fencing tokens, and the reaper of crashed attempts;
- metrics.py: the metrics stream (ingest, truncate, `points_since` pages);
- evaluations.py: pass@k results; workers.py: worker daemons; flags.py: studio flags;
- mlflow_cursor.py: what was forwarded to MLflow; overviews.py: the dashboard's one-query listings.

Each function is one transaction. On SQLite writers are serialized by `BEGIN IMMEDIATE`; on PostgreSQL claims
use `FOR UPDATE SKIP LOCKED`.
"""

from __future__ import annotations

from wmtp_studio.database import (
    check_models_match_migrations,
    database_error,
    database_file,
    file_identity,
    make_engine,
    upgrade,
)
from wmtp_studio.store.evaluations import (
    list_evaluations,
    record_evaluation,
    record_later_evaluation,
    record_results,
)
from wmtp_studio.store.flags import get_flag, queue_paused, set_flag
from wmtp_studio.store.leases import (
    claim_next_run,
    finish_run,
    renew_lease,
    requeue_crashed_run,
    requeue_expired_leases,
)
from wmtp_studio.store.metrics import (
    SCALAR_KINDS,
    Point,
    PointPage,
    ingest_metric_lines,
    last_seq,
    latest_metrics,
    latest_points,
    metric_blobs_since,
    points_since,
    truncate_metrics,
)
from wmtp_studio.store.mlflow_cursor import mark_mlflow_synced, runs_to_sync, set_mlflow_run
from wmtp_studio.store.overviews import (
    RunOverview,
    SetProgress,
    comparison_set_progress,
    failure_reason,
    queue_runs,
    runs_overview,
)
from wmtp_studio.store.runs import get_run, list_runs, request_cancel, retry_run, set_of_run, set_priority
from wmtp_studio.store.submission import (
    Submission,
    get_comparison_set,
    list_saved_recipes,
    save_recipe,
    submission,
)
from wmtp_studio.store.workers import (
    WORKER_DEAD_AFTER_S,
    WORKER_FORGET_AFTER_S,
    forget_dead_workers,
    heartbeat,
    list_workers,
    register_worker,
    unregister_worker,
    worker_alive,
)

__all__ = [
    "SCALAR_KINDS",
    "WORKER_DEAD_AFTER_S",
    "WORKER_FORGET_AFTER_S",
    "Point",
    "PointPage",
    "RunOverview",
    "SetProgress",
    "Submission",
    "check_models_match_migrations",
    "claim_next_run",
    "comparison_set_progress",
    "database_error",
    "database_file",
    "failure_reason",
    "file_identity",
    "finish_run",
    "forget_dead_workers",
    "get_comparison_set",
    "get_flag",
    "get_run",
    "heartbeat",
    "ingest_metric_lines",
    "last_seq",
    "latest_metrics",
    "latest_points",
    "list_evaluations",
    "list_runs",
    "list_saved_recipes",
    "list_workers",
    "make_engine",
    "mark_mlflow_synced",
    "metric_blobs_since",
    "points_since",
    "queue_paused",
    "queue_runs",
    "record_evaluation",
    "record_later_evaluation",
    "record_results",
    "register_worker",
    "renew_lease",
    "request_cancel",
    "requeue_crashed_run",
    "requeue_expired_leases",
    "retry_run",
    "runs_overview",
    "runs_to_sync",
    "save_recipe",
    "set_flag",
    "set_mlflow_run",
    "set_of_run",
    "set_priority",
    "submission",
    "truncate_metrics",
    "unregister_worker",
    "upgrade",
    "worker_alive",
]
