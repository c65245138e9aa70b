"""1000 runs submitted by 3 OS processes at once into one studio database, then claimed by 3 claimer processes
at once: every run is stored, and every run is claimed exactly once (none lost, none claimed twice). On SQLite
(one file, `BEGIN IMMEDIATE`) and, when WMTP_TEST_POSTGRES_URL is set, on a fresh PostgreSQL database
(`FOR UPDATE SKIP LOCKED`)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import RECIPES, ROOT
from tests.integration.jobs import wait_for
from tests.integration.services import POSTGRES_URL, fresh_postgres_database
from wmtp_studio import store

pytestmark = pytest.mark.slow

# Both scripts wait for a `go` file so that the three processes really run at the same time.
SUBMITTER = """
import json, sys, time
from pathlib import Path
from wmtp_studio import store
from wmtp_studio.recipe import load_recipe
from wmtp_studio.settings import Settings
from wmtp_studio.submit import submit_run

url, home, recipe_path, n, ready, go = sys.argv[1:]
settings = Settings.from_env({"WMTP_HOME": home, "WMTP_DATABASE_URL": url})
engine = store.make_engine(url)
recipe = load_recipe(Path(recipe_path))
Path(ready).touch()
while not Path(go).exists():
    time.sleep(0.01)
ids = [submit_run(engine=engine, settings=settings, recipe=recipe).id for _ in range(int(n))]
print(json.dumps(ids))
"""
CLAIMER = """
import json, sys, time
from pathlib import Path
from wmtp_studio import store

url, owner, ready, go = sys.argv[1:]
engine = store.make_engine(url)
Path(ready).touch()
while not Path(go).exists():
    time.sleep(0.01)
ids = []
while (run := store.claim_next_run(engine=engine, owner=owner, gpus_free=0, lease_s=600)) is not None:
    ids.append(run.id)
print(json.dumps(ids))
"""


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("postgresql", marks=pytest.mark.skipif(not POSTGRES_URL, reason="no PostgreSQL")),
    ]
)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'studio.db'}"
    else:
        with fresh_postgres_database() as pg:
            yield pg


def at_once(scripts: list[tuple[str, list[str]]], tmp_path: Path, tag: str) -> list[list[int]]:
    """Start one process per (script, args), release them together, and return what each printed."""
    go = tmp_path / f"{tag}-go"
    ready = [tmp_path / f"{tag}-ready{i}" for i in range(len(scripts))]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, *args, str(ready[i]), str(go)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i, (script, args) in enumerate(scripts)
    ]

    def all_ready() -> bool:
        assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
        return all(r.exists() for r in ready)

    wait_for(all_ready, 120, "the processes to get ready", every=0.05)
    go.touch()
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
        results.append(json.loads(out))
    return results


def test_1000_runs_from_3_processes_are_all_stored_and_each_claimed_once(url: str, tmp_path: Path) -> None:
    engine = store.make_engine(url)
    store.upgrade(engine=engine)
    home, recipe = str(tmp_path / "home"), str(RECIPES / "tiny-ntp.yaml")
    submitted = at_once(
        [(SUBMITTER, [url, home, recipe, str(n)]) for n in (333, 333, 334)], tmp_path, "submit"
    )
    ids = [i for batch in submitted for i in batch]
    assert len(ids) == len(set(ids)) == 1000
    assert all(batch == sorted(batch) for batch in submitted)  # each process got increasing ids
    stored = store.list_runs(engine=engine, limit=2000)
    assert sorted(r.id or 0 for r in stored) == sorted(ids)
    assert {r.status for r in stored} == {"queued"}
    for run in stored[::97]:  # every run's frozen recipe is its own and complete
        assert json.loads((Path(run.run_dir) / "recipe.json").read_text()) == json.loads(run.recipe_json)

    claimed = at_once([(CLAIMER, [url, f"claimer{c}"]) for c in range(3)], tmp_path, "claim")
    counts = Counter(i for batch in claimed for i in batch)
    assert sorted(counts) == sorted(ids)  # none lost
    assert max(counts.values()) == 1  # none claimed twice
    assert all(len(batch) > 0 for batch in claimed)  # the three really competed
    runs = store.list_runs(engine=engine, limit=2000)
    owners = {r.id: r.lease_owner for r in runs}
    for c, batch in enumerate(claimed):
        assert all(owners[i] == f"claimer{c}" for i in batch)  # the store agrees on who holds each run
    assert {(r.status, r.attempts, r.fencing_token) for r in runs} == {("running", 1, 1)}
    engine.dispose()
