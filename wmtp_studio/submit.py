"""From recipes to stored runs: one run, a comparison set, the quickstart. Shared by the CLI and the dashboard.

Everything is checked before the first write and each call is one transaction, so a bad recipe or factor stores
nothing. A recipe naming an earlier run's model as `run:N` (runrefs.py) makes the new runs depend on run N: they
wait until it succeeded and then train from its model. Local paths must exist (runrefs.check_local_paths) and
relative ones are made absolute here, so workers started elsewhere find them. Only run ids then travel through the queue (`wake_workers`).
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from sqlalchemy.engine import Engine

from wmtp_studio import store
from wmtp_studio.compare import FACTOR, expand
from wmtp_studio.errors import StudioError
from wmtp_studio.models import ComparisonSet, Run
from wmtp_studio.recipe import Recipe, load_recipe
from wmtp_studio.runrefs import absolutize_local_paths, check_local_paths, run_refs
from wmtp_studio.settings import Settings
from wmtp_studio.taskqueue import announce

QUICKSTART_ALGORITHMS = ("ntp", "baseline-mtp", "critic-wmtp", "rho1-wmtp")
QUICKSTART_ALL_ALGORITHMS = ("ntp", "baseline-mtp", "critic-wmtp", "rho1-wmtp", "grad-wmtp")
"""The quickstart's every-algorithm option (the dashboard's offer, `wmtp-studio quickstart --all-algorithms`): every
weighting family the studio trains, fine-tuned from the same base on the same data."""
QUICKSTART_DURATION = "5-10 minutes in all on 2 CPU cores"
"""How long the quickstart takes, said the same way everywhere (the CLI's help, the dashboard's offer, the
README); `wmtp-studio quickstart --report` measures it. Other programs loading the cores make it longer."""


def _prepare(engine: Engine, recipe: Recipe) -> tuple[Recipe, int | None]:
    """(recipe with local paths made absolute, the run it depends on); refuses unknown or unusable runs."""
    refs = run_refs(recipe)
    if len(refs) > 1:
        raise StudioError(
            f"{recipe.name}: names runs {', '.join(f'run:{r}' for r in sorted(refs))}; a run can depend on "
            "one earlier run only (use the same run:N for the model and the reference)"
        )
    dep = next(iter(refs), None)
    if dep is not None:
        row = store.get_run(engine=engine, run_id=dep)
        if row is None:
            raise StudioError(f"{recipe.name}: run:{dep} names no run (list them with `wmtp-studio runs`)")
    check_local_paths(recipe)  # a missing local model or reference: refused now, not 4 s into the run
    return absolutize_local_paths(recipe, Path.cwd()), dep


def submit_run(
    *, engine: Engine, settings: Settings, recipe: Recipe, priority: int = 0, gpus: int = 0
) -> Run:
    """Store one run of `recipe` (waiting on its `run:N` dependency, if any)."""
    recipe, dep = _prepare(engine, recipe)
    with store.submission(engine=engine, runs_dir=settings.runs_dir) as sub:
        return sub.add_run(recipe=recipe, priority=priority, gpus_requested=gpus, depends_on_run_id=dep)


def submit_comparison(
    *,
    engine: Engine,
    settings: Settings,
    recipe: Recipe,
    algorithms: Sequence[str],
    seeds: Sequence[int],
    priority: int = 0,
    gpus: int = 0,
) -> tuple[ComparisonSet, list[Run]]:
    """Store a comparison set: `recipe` expanded over algorithms x seeds (compare.py), in one transaction."""
    recipe, dep = _prepare(engine, recipe)
    expanded = expand(recipe, algorithms, seeds)  # every check before the first write
    with store.submission(engine=engine, runs_dir=settings.runs_dir) as sub:
        cset = sub.add_comparison_set(
            name=recipe.name,
            base=recipe,
            factor=FACTOR,
            diff={"algorithm": list(algorithms), "seed": list(seeds)},
        )
        runs = [
            sub.add_run(
                recipe=r,
                comparison_set_id=cset.id,
                priority=priority,
                gpus_requested=gpus,
                depends_on_run_id=dep,
                diff=diff,
            )
            for r, diff in expanded
        ]
    return cset, runs


def quickstart_recipes(overrides: Sequence[str] = ()) -> tuple[Recipe, Recipe]:
    """(pre-training base, fine-tune) of the quickstart, shipped with the package, with `overrides` applied to
    both. The fine-tune names its base as `run:0`, replaced by the base run's id when submitted."""
    folder = resources.files("wmtp_studio") / "quickstart"
    with resources.as_file(folder) as path:
        return load_recipe(path / "base.yaml", list(overrides)), load_recipe(
            path / "finetune.yaml", list(overrides)
        )


QUICKSTART_MAX_SEEDS = 10
"""More seeds than this is no longer a quickstart (each seed adds four fine-tunes); queue a comparison instead."""


def submit_quickstart(
    *,
    engine: Engine,
    settings: Settings,
    seeds: int = 1,
    overrides: Sequence[str] = (),
    algorithms: Sequence[str] = QUICKSTART_ALGORITHMS,
) -> tuple[ComparisonSet, list[Run]]:
    """The quickstart comparison (DESIGN.md): a tiny NTP base pre-trained on the generated task, then fine-tunes
    of that base with every algorithm on its harder `compose` family, each evaluated on the held-out split.
    `seeds` fine-tuning seeds (0, 1, ...) per algorithm: one is fast; three or more show the seed noise of each
    difference. The base is trained once (seed 0) and shared, so the seeds vary the fine-tuning only. The runs
    are stored seed by seed, so that workers, which take the oldest first, finish a whole comparison of seed 0
    before seed 1. `overrides` (dotted, e.g. train.steps=3) apply to the base and the fine-tunes. `algorithms`:
    the fine-tunes' (QUICKSTART_ALL_ALGORITHMS: every family). Returns the set and all runs, the base first; one
    transaction."""
    if not 1 <= seeds <= QUICKSTART_MAX_SEEDS:
        raise StudioError(
            f"quickstart seeds: {seeds} is not between 1 and {QUICKSTART_MAX_SEEDS} (1: fast; 3: shows seed "
            "noise); for more, queue a comparison set with `wmtp-studio compare RECIPE --seeds ...`"
        )
    seed_list = list(range(seeds))
    base, finetune = quickstart_recipes(overrides)
    with store.submission(engine=engine, runs_dir=settings.runs_dir) as sub:
        base_run = sub.add_run(recipe=base, priority=1)
        data = finetune.model_dump(mode="json")
        ref = f"run:{base_run.id}"
        data["model"]["name_or_path"] = data["tokenizer"]["path"] = data["algorithm"]["reference"] = ref
        finetune = type(finetune).model_validate(data)
        expanded = sorted(
            expand(finetune, algorithms, seed_list), key=lambda pair: pair[0].train.seed
        )  # stable: algorithms stay in order within a seed
        cset = sub.add_comparison_set(
            name=finetune.name,
            base=finetune,
            factor=FACTOR,
            diff={"algorithm": list(algorithms), "seed": seed_list},
        )
        runs = [
            sub.add_run(recipe=r, comparison_set_id=cset.id, depends_on_run_id=base_run.id, diff=diff)
            for r, diff in expanded
        ]
    return cset, [base_run, *runs]


def wake_workers(settings: Settings, run_ids: Sequence[int]) -> str | None:
    """Tell workers through the queue that runs are claimable (only ids travel); returns a warning if the queue
    cannot be reached. The runs are stored already and workers also poll the store, so that only costs latency."""
    try:
        announce(run_ids, queue_url=settings.queue_url)
    except Exception as exc:  # the queue is an optimisation over the store, never a requirement
        return f"could not notify workers through the queue ({exc}); they will find the runs by polling"
    return None
