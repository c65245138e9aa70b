"""What users submit: saved recipes, comparison sets and runs. Runs and sets are added in one transaction
(`submission`), so that a comparison set is stored whole or not at all."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from wmtp_studio import rundir
from wmtp_studio.database import read_session as _read
from wmtp_studio.database import write_session as _write
from wmtp_studio.errors import StudioError
from wmtp_studio.models import ComparisonSet, Run, SavedRecipe, utcnow
from wmtp_studio.recipe import Recipe
from wmtp_studio.store.runs import promote_waiting, require_run

log = logging.getLogger(__name__)


def save_recipe(*, engine: Engine, name: str, yaml_text: str, recipe: Recipe) -> SavedRecipe:
    """Save (or overwrite) a named recipe with its YAML and canonical form."""
    with _write(engine) as s:
        row = s.exec(select(SavedRecipe).where(SavedRecipe.name == name)).first()
        row = row or SavedRecipe(name=name, yaml_text="", canonical_json="", sha256="")
        row.yaml_text, row.canonical_json, row.sha256 = yaml_text, recipe.canonical_json(), recipe.sha256()
        row.updated_at = utcnow()
        s.add(row)
        return row


def list_saved_recipes(*, engine: Engine) -> list[SavedRecipe]:
    with _read(engine) as s:
        return list(s.exec(select(SavedRecipe).order_by(col(SavedRecipe.name))))


def get_comparison_set(*, engine: Engine, comparison_set_id: int) -> ComparisonSet | None:
    with _read(engine) as s:
        return s.get(ComparisonSet, comparison_set_id)


class Submission:
    """Runs and comparison sets added in one transaction (see `submission`)."""

    def __init__(self, session: Session, runs_dir: Path) -> None:
        self._s, self._runs_dir = session, runs_dir
        self.moved_aside: list[tuple[Path, Path]] = []
        """(run directory, where another run's files found there were moved): say so to the user."""

    def add_comparison_set(
        self, *, name: str, base: Recipe, factor: str, diff: dict[str, Any]
    ) -> ComparisonSet:
        """A comparison set: `base` expanded over `factor` (e.g. `algorithm x seed`), the values in `diff`."""
        row = ComparisonSet(name=name, base_recipe_sha256=base.sha256(), factor=factor, diff=diff)
        self._s.add(row)
        self._s.flush()  # assigns the id
        return row

    def add_run(
        self,
        *,
        recipe: Recipe,
        comparison_set_id: int | None = None,
        priority: int = 0,
        max_attempts: int = 3,
        depends_on_run_id: int | None = None,
        gpus_requested: int = 0,
        diff: dict[str, Any] | None = None,
    ) -> Run:
        """Add a run (`queued`, or `waiting` on its dependency) and freeze runs_dir/<id>/recipe.json."""
        if depends_on_run_id is not None:
            dep = require_run(self._s, depends_on_run_id)
            if dep.status in ("failed", "cancelled"):
                raise StudioError(
                    f"run {depends_on_run_id} is {dep.status}: a run depending on it would never start "
                    f"(retry it first with `wmtp-studio retry {depends_on_run_id}`)"
                )
        run = Run(
            name=recipe.name,
            total_steps=recipe.train.steps or 0,
            comparison_set_id=comparison_set_id,
            recipe_json=recipe.canonical_json(),
            recipe_sha256=recipe.sha256(),
            algorithm=recipe.algorithm.name,
            seed=recipe.train.seed,
            status="queued" if depends_on_run_id is None else "waiting",
            priority=priority,
            max_attempts=max_attempts,
            depends_on_run_id=depends_on_run_id,
            gpus_requested=gpus_requested,
            diff=diff,
        )
        self._s.add(run)
        self._s.flush()  # assigns the id
        run_dir = self._runs_dir / str(run.id)
        stamp = rundir.RunStamp(uid=run.uid, recipe_sha256=run.recipe_sha256)
        try:
            moved = rundir.take_for_new_run(
                run_dir, stamp
            )  # a reset database reuses ids: never adopt old files
            (run_dir / "recipe.json").write_text(run.recipe_json)
        except OSError as exc:  # a full or read-only disk: nothing is stored (the transaction rolls back)
            raise StudioError(f"cannot write the run directory {run_dir}: {exc.strerror or exc}") from None
        if moved is not None:
            log.warning(
                "%s held another run's files (a reset studio database?): moved them to %s", run_dir, moved
            )
            self.moved_aside.append((run_dir, moved))
        run.run_dir = str(run_dir)
        promote_waiting(self._s)  # the dependency may already be finished
        return run


@contextmanager
def submission(*, engine: Engine, runs_dir: Path) -> Iterator[Submission]:
    """One transaction for several runs and sets: everything added is stored, or nothing (an exception inside
    the block rolls it all back; recipe.json files already written for ids that were never stored are
    overwritten when those ids are used)."""
    with _write(engine) as s:
        yield Submission(s, runs_dir)
