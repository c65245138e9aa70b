"""Forward runs from the studio database to MLflow (DESIGN.md hop 6): one experiment per comparison set, the base
it was fine-tuned from included (other runs go to `wmtp/runs`), tagged to open as training runs; one MLflow run
per studio run with allow-listed params, the metrics in batches, and, once the run has finished, its status,
evaluations (as `eval/<benchmark>/pass_at_<k>` metrics) and artifacts (recipe.json, each evaluation's
results.json and samples.jsonl); once a whole set has finished, its comparison table (Δ, CI, p against ntp) on a
parent run.

The database is the source and each run's cursor (`Run.mlflow_synced_seq`) says what MLflow already has, so a
forwarder that was stopped, or an MLflow that could not be reached, catches up later. Metric timestamps are
deterministic (the run's creation time plus the line's seq, in ms): a batch sent again (e.g. after a timeout,
although the server stored it) is the same rows, which MLflow's SQL stores deduplicate. A run rewound to a
checkpoint rewrites lines the cursor has already passed; MLflow keeps their first values.

`Forwarder` does this in a background thread of the worker daemon: woken by `nudge()` (supervise calls it after
each ingested batch and when a run ends) at most every `min_interval_s`, and every `catch_up_s` anyway. An
unreachable or failing MLflow is logged once (and once more when it works again), never raised, and never makes a
job wait: the lease renewal and the ingestion loop only set an event.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from wmtp_studio import store
from wmtp_studio.models import Run
from wmtp_studio.recipe import recipe_from_json
from wmtp_studio.tracking import allowed_params, artifact_location

log = logging.getLogger("wmtp_worker.mlflow")

BATCH = 1000
"""Metrics per `log_batch` call (MLflow's limit)."""
NO_SET_EXPERIMENT = "wmtp/runs"
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
"""MLflow's experiment type "Machine learning" (its UI's ExperimentKind; the other is `genai_development`): the
experiment opens on its runs table rather than the GenAI Traces view. MLflow 3.17.2's UI follows its sidebar's
workflow switch instead (stored in the browser, GenAI by default; `?workflowType=machine_learning` in the URL
overrides it), so links to an experiment should carry that parameter."""
COMPARISON_TAG = "wmtp.comparison"
"""Tag of the MLflow run that holds a comparison set's table (the parent of the set's runs)."""
MLFLOW_STATUS = {"succeeded": "FINISHED", "failed": "FAILED", "cancelled": "KILLED"}
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
}
"""Bounds on one HTTP call to a tracking server (MLflow's own defaults retry for minutes); env vars win."""

_wake = threading.Event()
_USERINFO = re.compile(r"//[^/\s@]+@")


def nudge() -> None:
    """New rows are stored: the forwarder of this process, if one runs, syncs soon. Never blocks."""
    _wake.set()


def _ms(when: datetime | None) -> int | None:
    return None if when is None else int(when.timestamp() * 1000)


def metric_key(name: str, allowed: str = "_-.:/") -> str:
    """A stored metric name as an MLflow one (alphanumerics and `_-.:/` only): `eval/pass@1` -> `eval/pass_at_1`."""
    return "".join(c if c.isalnum() or c in allowed else "_" for c in name.replace("@", "_at_"))


def _segment(text: str) -> str:
    """A benchmark name as one segment of a metric name (no `/`), as the evaluator names its eval lines
    (`wmtp_studio.evaluate.run.metric_segment`)."""
    return metric_key(text, allowed="_-.:").strip(".") or "_"


def redact(text: str) -> str:
    """`text` without the user and password of the URLs in it (`http://user:pw@host` -> `http://host`), for logs."""
    return _USERINFO.sub("//", text)


def _quiet_retries(record: logging.LogRecord) -> bool:
    """urllib3 warns on every retry; the forwarder reports an unreachable server once, itself."""
    return record.threadName != "mlflow-sync"


def _experiment_id(client: Any, engine: Engine, run: Run, uri: str) -> str:
    """The experiment of the run's comparison set (a base the set was fine-tuned from included), else
    `wmtp/runs`; created with the tag that makes MLflow's UI open it as training runs."""
    from mlflow.exceptions import MlflowException

    name = NO_SET_EXPERIMENT
    set_id = store.set_of_run(engine=engine, run_id=run.id or 0)
    if set_id is not None:
        cset = store.get_comparison_set(engine=engine, comparison_set_id=set_id)
        name = f"wmtp/set-{set_id}-{cset.name if cset else ''}"
    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            exp_id = str(client.create_experiment(name, artifact_location=artifact_location(uri)))
        except MlflowException:  # another worker created it meanwhile
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
    if exp is not None:
        exp_id = str(exp.experiment_id)
        if exp.tags.get(EXPERIMENT_KIND_TAG) == EXPERIMENT_KIND:
            return exp_id
    client.set_experiment_tag(exp_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return exp_id


def _create_mlflow_run(client: Any, engine: Engine, run: Run, uri: str) -> str:
    """Create the MLflow run with its tags, params and recipe; returns the MLflow run recorded for `run`."""
    from mlflow.entities import Param

    assert run.id is not None
    recipe = recipe_from_json(run.recipe_json, f"run {run.id}")  # as stored: secret references unresolved
    tags = {
        "wmtp.run_id": str(run.id),
        "wmtp.algorithm": run.algorithm,
        "wmtp.seed": str(run.seed),
        "wmtp.comparison_set_id": str(run.comparison_set_id or ""),
        "wmtp.recipe_sha256": run.recipe_sha256,
    }
    exp_id = _experiment_id(client, engine, run, uri)
    created = client.create_run(
        exp_id, start_time=_ms(run.started_at), tags=tags, run_name=run.name or f"run-{run.id}"
    ).info.run_id
    try:
        params = [Param(k, v[:6000]) for k, v in allowed_params(recipe).items()]
        for i in range(0, len(params), 100):
            client.log_batch(created, params=params[i : i + 100])
        client.log_text(created, run.recipe_json, "recipe.json")
        recorded = store.set_mlflow_run(engine=engine, run_id=run.id, mlflow_run_id=created)
    except BaseException:
        with contextlib.suppress(Exception):
            client.delete_run(created)
        raise
    if recorded != created:  # another worker recorded its own first
        client.delete_run(created)
    return recorded


def _send(client: Any, mlflow_id: str, metrics: list[Any]) -> None:
    for i in range(0, len(metrics), BATCH):
        client.log_batch(mlflow_id, metrics=metrics[i : i + BATCH])


def _forward_points(client: Any, engine: Engine, run: Run, mlflow_id: str) -> int:
    from mlflow.entities import Metric

    assert run.id is not None
    cursor, sent, base = run.mlflow_synced_seq, 0, _ms(run.created_at) or 0
    while points := store.points_since(engine=engine, run_id=run.id, after_seq=cursor, limit=BATCH).points:
        # eval/ points go as the run's evaluations (_finish), under the same names: sent once, not twice
        metrics = [
            Metric(metric_key(p.name), p.value, base + p.seq, p.step)
            for p in points
            if not p.name.startswith("eval/")
        ]
        _send(client, mlflow_id, metrics)
        cursor, sent = points[-1].seq, sent + len(points)
        store.mark_mlflow_synced(engine=engine, run_id=run.id, synced_seq=cursor)
    return sent


def _finish(client: Any, engine: Engine, run: Run, mlflow_id: str) -> None:
    """Evaluations, artifacts and the final status of a finished run."""
    from mlflow.entities import Metric

    assert run.id is not None
    metrics = []
    for ev in store.list_evaluations(engine=engine, run_id=run.id):
        key, ts = f"eval/{_segment(ev.benchmark)}/pass_at_{ev.k}", _ms(ev.created_at) or 0
        for name, value in (
            (key, ev.pass_at_k),
            (f"{key}/ci_low", ev.ci_low),
            (f"{key}/ci_high", ev.ci_high),
        ):
            metrics.append(Metric(name, value, ts, run.last_step))
    _send(client, mlflow_id, metrics)
    for results in sorted(Path(run.run_dir).glob("eval/*/results.json")):  # as supervise writes them
        client.log_artifact(mlflow_id, str(results), artifact_path=f"eval/{results.parent.name}")
        if (
            samples := results.with_name("samples.jsonl")
        ).is_file():  # each sample's verdict and why it failed
            client.log_artifact(mlflow_id, str(samples), artifact_path=f"eval/{results.parent.name}")
    client.set_terminated(mlflow_id, MLFLOW_STATUS[run.status], end_time=_ms(run.finished_at))
    store.mark_mlflow_synced(engine=engine, run_id=run.id, done=True)


def sync_run(*, engine: Engine, client: Any, uri: str, run_id: int) -> int:
    """Bring the run's MLflow copy up to date (creating it if needed); returns the metric points sent."""
    run = store.get_run(engine=engine, run_id=run_id)
    if run is None or run.started_at is None:
        return 0
    mlflow_id = run.mlflow_run_id or _create_mlflow_run(client, engine, run, uri)
    finished = run.status in MLFLOW_STATUS
    if run.mlflow_done and not finished:  # retried after it had finished: live again
        client.update_run(mlflow_id, status="RUNNING")
        store.mark_mlflow_synced(engine=engine, run_id=run_id, done=False)
    sent = _forward_points(client, engine, run, mlflow_id)
    if finished and (not run.mlflow_done or sent):  # new points after done: it was retried and finished again
        _finish(client, engine, run, mlflow_id)
        log_comparison(engine=engine, client=client, run_id=run_id)
    return sent


def log_comparison(*, engine: Engine, client: Any, run_id: int) -> str | None:
    """Once every run of the run's comparison set (and the base it was fine-tuned from) has finished and is in
    MLflow: the set's comparison table on a parent run in the set's experiment (pass@k with CIs; Δ, CI and p
    against the ntp row as metrics `<bench>/<algorithm>/delta|delta_ci_low|delta_ci_high|p`; the table as
    comparison.md with the note naming the test), and every run of the set nested under it. Idempotent: the
    parent is found again by its tag; returns its id, or None while the set is not complete."""
    from mlflow.entities import Metric

    from wmtp_studio.compare.export import Interval, PValue, to_markdown
    from wmtp_studio.report import set_tables

    set_id = store.set_of_run(engine=engine, run_id=run_id)
    if set_id is None:
        return None
    runs = sorted(
        store.list_runs(engine=engine, comparison_set_id=set_id, limit=1000), key=lambda r: r.id or 0
    )
    bases = {r.depends_on_run_id for r in runs if r.depends_on_run_id is not None}
    members = [*(b for i in sorted(bases) if (b := store.get_run(engine=engine, run_id=i))), *runs]
    if not runs or any(r.status not in MLFLOW_STATUS or r.mlflow_run_id is None for r in members):
        return None
    exp_id = client.get_run(members[-1].mlflow_run_id).info.experiment_id
    found = client.search_runs([exp_id], filter_string=f"tags.`{COMPARISON_TAG}` = '{set_id}'", max_results=1)
    parent = found[0].info.run_id if found else None
    if parent is None:
        cset = store.get_comparison_set(engine=engine, comparison_set_id=set_id)
        name = f"set-{set_id} {cset.name if cset else ''} comparison".replace("  ", " ")
        parent = client.create_run(exp_id, run_name=name, tags={COMPARISON_TAG: str(set_id)}).info.run_id
    tables = set_tables(engine, runs)
    ts = max(_ms(r.finished_at) or 0 for r in members)
    metrics, columns = [], tables.results.columns
    tests: dict[str, str] = {}  # which paired test gave each p
    for label, row in zip(tables.labels, tables.results.rows, strict=True):
        algorithm = _segment(label.split(" ", 1)[-1])
        for name, cell in zip(columns, row, strict=True):
            kind, _, key = name.partition(" ")  # "Δ <benchmark> pass@<k>", "p <benchmark> pass@<k>"
            benchmark, _, at_k = key.rpartition(" ")
            bench = f"{_segment(benchmark)}/{metric_key(at_k)}"
            if kind == "Δ" and isinstance(cell, Interval):
                metrics.append(Metric(f"{bench}/{algorithm}/delta", cell.value, ts, 0))
                if cell.low is not None and cell.high is not None:
                    metrics.append(Metric(f"{bench}/{algorithm}/delta_ci_low", cell.low, ts, 0))
                    metrics.append(Metric(f"{bench}/{algorithm}/delta_ci_high", cell.high, ts, 0))
            elif kind == "p" and isinstance(cell, PValue):
                metrics.append(Metric(f"{bench}/{algorithm}/p", cell.value, ts, 0))
                tests[f"wmtp.test.{bench}/{algorithm}"] = cell.test
    _send(client, parent, metrics)
    client.log_text(parent, to_markdown(tables.results), "comparison.md")
    client.set_tag(parent, "wmtp.baseline", tables.labels[tables.baseline])
    for tag, test in tests.items():
        client.set_tag(parent, tag, test)
    for member in members:
        client.set_tag(member.mlflow_run_id, "mlflow.parentRunId", parent)
    client.set_terminated(parent, "FINISHED", end_time=ts)
    return str(parent)


class Forwarder:
    """Syncs every run that is behind (`store.runs_to_sync`) to the tracking URI, in a background thread."""

    def __init__(
        self, *, engine: Engine, uri: str, min_interval_s: float = 2.0, catch_up_s: float = 30.0
    ) -> None:
        self.engine, self.uri = engine, uri
        self.min_interval_s, self.catch_up_s = min_interval_s, catch_up_s
        self.failing = False
        self._client: Any = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="mlflow-sync", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 15.0) -> None:
        """Stop after a last pass (bounded by `timeout`: the rest is caught up by the next forwarder)."""
        self._stop.set()
        _wake.set()
        self._thread.join(timeout)

    def sync_pending(self, max_failures: int = 2) -> int:
        """One pass over the runs that are behind; returns the points sent. Failures are logged, not raised;
        after `max_failures` of them (MLflow is most likely down) the rest waits for the next pass."""
        failures, sent = 0, 0
        try:
            if self._client is None:
                from mlflow.tracking import MlflowClient

                if self.uri.startswith(("http://", "https://")):
                    for name, value in HTTP_DEFAULTS.items():
                        os.environ.setdefault(name, value)
                    logging.getLogger("urllib3.connectionpool").addFilter(_quiet_retries)
                self._client = MlflowClient(tracking_uri=self.uri)
            runs = store.runs_to_sync(engine=self.engine)
        except Exception as exc:  # the thread's edge: report, retry on the next pass
            self._failed(exc, None)
            return 0
        for run in runs:
            assert run.id is not None
            try:
                sent += sync_run(engine=self.engine, client=self._client, uri=self.uri, run_id=run.id)
            except Exception as exc:  # the thread's edge: report, retry on the next pass
                self._failed(exc, run.id)
                failures += 1
                if failures >= max_failures:
                    return sent
        if failures == 0 and self.failing:
            log.info("MLflow at %s works again; forwarding resumed", redact(self.uri))
            self.failing = False
        return sent

    def _failed(self, exc: Exception, run_id: int | None) -> None:
        try:  # MLflow's store is SQL too: blame it only if the studio database itself still reads
            store.runs_to_sync(engine=self.engine, limit=1)
        except SQLAlchemyError as studio_exc:
            if not self.failing:
                log.warning(
                    "%s; forwarding to MLflow waits until it works",
                    store.database_error(self.engine.url, studio_exc),
                )
            self.failing = True
            return
        if not self.failing:
            first = redact((str(exc).strip().splitlines() or [""])[0])[:300]
            where = "" if run_id is None else f" (run {run_id})"
            log.warning(
                "MLflow at %s failed%s: %s: %s; the runs stay in the studio database and are forwarded when it "
                "works again",
                redact(self.uri),
                where,
                type(exc).__name__,
                first,
            )
        self.failing = True

    def _loop(self) -> None:
        while not self._stop.is_set():
            _wake.clear()
            self.sync_pending()
            self._stop.wait(self.min_interval_s)  # at most one pass per interval, however many nudges
            if self.failing:  # back off: nudges wait for the next catch-up
                self._stop.wait(self.catch_up_s)
            else:
                _wake.wait(self.catch_up_s)
        if not self.failing:
            self.sync_pending()
