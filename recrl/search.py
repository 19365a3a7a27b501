"""Hyperparameter search: an Optuna study run as a Hydra sweep (``recrl sweep search=<name>``).

The sweeper (``hydra_plugins/recrl_optuna_sweeper``, a thin Hydra plugin) asks the study for a
batch of trials, launches them as ordinary jobs through whatever Hydra launcher is configured
(one at a time, joblib, Ray, SLURM), reads each job's objective from its folder and tells the
study. Each trial's job reports its periodic ``eval/return`` to the study, whose median pruner
may stop it early (:func:`trial_reporter`). The study lives in ``<sweep folder>/study.db``
(SQLite), so an interrupted search resumes (``search.resume=true``).

The objective never looks at the ground truth: the delivered policy's return in the training
simulator (the report's final evaluation), the off-policy estimate on the validation logs (the
last training-time evaluation, with ``trainer.select_by=ope``), or the behavior model's
validation loss. The ground truth
of every trial is reported beside it so the gap (overfitting to the simulator) is visible.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from omegaconf import DictConfig, OmegaConf, open_dict

from recrl.report import METRICS_FILE, markdown_table, read_metrics, read_report, write_text_atomic
from recrl.sweep import FAILED, INTERRUPTED, OK, PRUNED, JobStatus, job_status
from recrl.types import Pruned, RecrlError

if TYPE_CHECKING:  # optuna is imported only by runs that search
    import optuna

logger = logging.getLogger(__name__)

OBJECTIVES = ("simulator", "ope", "behavior")
STUDY_FILE = "study.db"
TRIAL_COLUMNS = ["trial", "state", "objective", "ground_truth", "oracle_share", "seconds"]


@dataclass(frozen=True)
class SearchSettings:
    """The ``search`` config node (``conf/search/<name>.yaml``): what an Optuna search optimises.

    Attributes:
        objective: ``simulator`` (the delivered policy's return in the training simulator: the
            report's final evaluation over ``eval.episodes``), ``ope`` (the off-policy estimate
            ``ope.column`` on the validation split's logs: the last training-time evaluation, with
            ``trainer.select_by=ope``; the report's own OPE column reads the test split), both
            maximised; or ``behavior`` (the behavior model's validation loss, minimised). Never
            the ground truth.
        trials: trials in the study (a resumed study counts the ones it already has).
        parallel: trials launched together; ``None``: the launcher's ``n_jobs`` when it has one,
            else 1.
        seed: the TPE sampler's seed.
        pruning: stop a trial whose periodic ``eval/return`` falls below the median of earlier
            trials at the same evaluation (Optuna's ``MedianPruner``).
        startup_trials: trials that finish before pruning starts.
        warmup_evals: evaluations a trial reports before it may be pruned.
        resume: continue the newest study of this search under the sweep root (or the one in
            ``hydra.sweep.dir`` when given) instead of starting a new one.
        space: ``key: sweep`` pairs in Hydra's override syntax: ``interval(a, b)``,
            ``tag(log, interval(a, b))``, ``int(interval(a, b))``, ``choice(...)``, ``range(...)``;
            a sweep override on the command line adds to it.
        study: the study's name (``None``: ``recrl-<search option>``).
        trial, storage: set by the sweeper for each trial's job (which trial it is, where the
            study lives); leave them ``None``.
    """

    objective: Literal["simulator", "ope", "behavior"] = "simulator"
    trials: int = 30
    parallel: int | None = None
    seed: int = 0
    pruning: bool = True
    startup_trials: int = 5
    warmup_evals: int = 2
    resume: bool = False
    space: dict[str, str] = field(default_factory=dict)
    study: str | None = None
    trial: int | None = None
    storage: str | None = None

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise RecrlError(f"search.objective={self.objective!r}: use one of {', '.join(OBJECTIVES)} "
                             "(the ground truth is never an objective)")
        if self.trials < 1 or (self.parallel is not None and self.parallel < 1):
            raise RecrlError("search.trials and search.parallel must be >= 1")

    @property
    def direction(self) -> str:
        """``maximize`` for returns, ``minimize`` for the behavior model's loss."""
        return "minimize" if self.objective == "behavior" else "maximize"

    def pruner(self) -> optuna.pruners.BasePruner:
        """The study's pruner: the median rule after the start-up trials and warm-up evaluations."""
        import optuna

        if not self.pruning:
            return optuna.pruners.NopPruner()
        return optuna.pruners.MedianPruner(n_startup_trials=self.startup_trials,
                                           n_warmup_steps=self.warmup_evals)


def search_settings(cfg: DictConfig) -> SearchSettings:
    """The :class:`SearchSettings` of a composed config (its ``search`` node)."""
    node = OmegaConf.to_container(cfg.search, resolve=True)
    assert isinstance(node, dict)
    node.pop("_target_", None)
    try:
        return SearchSettings(**node)
    except TypeError as err:
        raise RecrlError(f"search: {err}") from err


# ---------------------------------------------------------------------- the space
@dataclass(frozen=True)
class Dimension:
    """One searched key: a float or int interval (optionally log-scaled) or a list of choices."""

    key: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False
    choices: tuple[Any, ...] = ()

    def suggest(self, trial: optuna.Trial) -> Any:
        """The trial's value of this key."""
        if self.choices:
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.integer:
            return trial.suggest_int(self.key, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.key, float(self.low), float(self.high), log=self.log)


def dimension(override: Override) -> Dimension:
    """The :class:`Dimension` of one parsed sweep override (``RecrlError`` for anything else)."""
    key, sweep = override.get_key_element(), override.value()
    if isinstance(sweep, IntervalSweep):
        integer = isinstance(sweep.start, int) and isinstance(sweep.end, int)
        return Dimension(key, sweep.start, sweep.end, log="log" in sweep.tags, integer=integer)
    if isinstance(sweep, ChoiceSweep):
        return Dimension(key, choices=tuple(sweep.list))
    if isinstance(sweep, RangeSweep):
        return Dimension(key, choices=tuple(override.sweep_iterator()))
    raise RecrlError(f"search space: {override.input_line} is not interval(...), choice(...), range(...) "
                     "or a list of values")


def parse_space(space: dict[str, str], arguments: Sequence[str]) -> tuple[list[Dimension], list[str]]:
    """(searched dimensions, fixed overrides): the config's ``space`` plus the sweep overrides
    among ``arguments`` (a command-line sweep wins over the config's for the same key); the
    other arguments are passed to every trial."""
    parser = OverridesParser.create()
    try:
        listed = parser.parse_overrides([f"{key}={sweep}" for key, sweep in space.items()])
        given = parser.parse_overrides(list(arguments))
    except Exception as err:  # Hydra's OverrideParseException, with its multi-line message
        raise RecrlError(f"search space: {str(err).splitlines()[0]}") from err
    dims = {o.get_key_element(): dimension(o) for o in listed}
    dims.update({o.get_key_element(): dimension(o) for o in given if o.is_sweep_override()})
    fixed = [o.input_line for o in given if not o.is_sweep_override()]
    return list(dims.values()), fixed


def format_value(value: Any) -> str:
    """A sampled value as a Hydra override value (floats with full precision)."""
    return repr(value) if isinstance(value, float) else str(value)


# ---------------------------------------------------------------------- the study
def study_name(config: DictConfig, settings: SearchSettings) -> str:
    """``search.study``, else ``recrl-<search option>``."""
    return settings.study or f"recrl-{config.hydra.runtime.choices.get('search') or 'search'}"


def storage_url(sweep_dir: Path) -> str:
    """The SQLite URL of the study in ``sweep_dir``."""
    return f"sqlite:///{(Path(sweep_dir) / STUDY_FILE).resolve()}"


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """The study's storage; parallel jobs wait up to 60 s for SQLite's write lock."""
    import optuna

    return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})


def resumed_sweep_dir(config: DictConfig, name: str) -> Path:
    """Where ``search.resume=true`` continues: ``hydra.sweep.dir`` when given on the command
    line, else the newest folder beside the current sweep folder holding a study named ``name``."""
    given = [o for o in config.hydra.overrides.hydra if str(o).startswith("hydra.sweep.dir=")]
    if given:
        return Path(config.hydra.sweep.dir)
    root = Path(config.hydra.sweep.dir).parent
    candidates = sorted((p.parent for p in root.glob(f"*/{STUDY_FILE}")), key=lambda p: p.stat().st_mtime)
    for folder in reversed(candidates):
        if name in study_names(storage_url(folder)):
            return folder
    raise RecrlError(f"search.resume=true: no study {name!r} under {root}; give the sweep folder "
                     "with hydra.sweep.dir=<folder>, or drop search.resume")


def study_names(url: str) -> list[str]:
    """The names of the studies stored at ``url`` (none for an unreadable or foreign file)."""
    import optuna

    try:
        return [s.study_name for s in optuna.get_all_study_summaries(open_storage(url))]
    except Exception:  # SQLAlchemy's and Optuna's errors alike: not a study to read
        return []


def create_study(settings: SearchSettings, name: str, url: str, resume: bool) -> optuna.Study:
    """The seeded TPE study (a resumed one marks its unfinished trials as failed)."""
    import optuna

    storage = open_storage(url)
    if not resume and name in study_names(url):
        raise RecrlError(f"{url} already holds study {name!r}; use search.resume=true to continue it")
    study = optuna.create_study(study_name=name, storage=storage, direction=settings.direction,
                                sampler=optuna.samplers.TPESampler(seed=settings.seed),
                                pruner=settings.pruner(), load_if_exists=resume)
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        # the storage API addresses trials by their internal id
        storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
        logger.info("search: trial %d did not finish before the interruption; marked failed", trial.number)
    return study


def finished_trials(study: optuna.Study) -> int:
    """Trials that count towards ``search.trials``: complete, pruned or failed."""
    import optuna

    done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)
    return len(study.get_trials(deepcopy=False, states=done))


# ---------------------------------------------------------------------- one trial's job
def trial_overrides(trial: optuna.Trial, dims: list[Dimension], fixed: list[str],
                    settings: SearchSettings, url: str, name: str) -> list[str]:
    """The overrides of one trial's job: the fixed ones, the sampled values, and where to report."""
    sampled = [f"{d.key}={format_value(d.suggest(trial))}" for d in dims]
    select = ["trainer.select_by=ope"] if settings.objective == "ope" else []  # what the objective reads
    where = [f"search.trial={trial.number}", f"search.storage='{url}'", f"search.study={name}"]
    return [*fixed, *sampled, *select, *where]


def trial_reporter(cfg: DictConfig, evaluate: Callable[[], dict[str, float]]
                   ) -> Callable[[], dict[str, float]]:
    """``evaluate``, also reporting each ``eval/return`` to the run's trial and raising
    :class:`~recrl.types.Pruned` when the study's pruner stops it; ``evaluate`` itself outside a
    search."""
    node = cfg.get("search")
    if not node or node.get("trial") is None or node.get("storage") is None:
        return evaluate
    import optuna

    settings = search_settings(cfg)
    study = optuna.load_study(study_name=settings.study, storage=open_storage(settings.storage),
                              pruner=settings.pruner())
    # Optuna has no public lookup of a running trial by its number; this is the one its storage uses
    trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, settings.trial)
    trial = optuna.trial.Trial(study, trial_id)
    step = 0

    def report() -> dict[str, float]:
        nonlocal step
        scores = evaluate()
        trial.report(float(scores["eval/return"]), step)
        step += 1
        if trial.should_prune():
            raise Pruned(f"trial {settings.trial} pruned after {step} evaluations: eval/return "
                         f"{scores['eval/return']:.4f} is below the median of earlier trials")
        return scores

    return report


def _last_eval(job_dir: Path) -> float | None:
    """The last ``eval/return`` in the job's ``metrics.jsonl``."""
    path = job_dir / METRICS_FILE
    if not path.is_file():
        return None
    values = [row["eval/return"] for row in read_metrics(path) if "eval/return" in row]
    return float(values[-1]) if values else None


def _trained_mean(report: dict[str, Any], env: str, metric: str) -> float:
    """The report's mean of ``metric`` for its trained policy in ``env``, NaN when absent."""
    policy = ((report.get("evaluation") or {}).get(env) or {}).get(report.get("algo"), {})
    value = (policy.get(metric) or {}).get("mean")
    return math.nan if value is None else float(value)


def objective_value(job_dir: Path, settings: SearchSettings) -> float | None:
    """The trial's objective from its folder (``None`` when the job did not produce one)."""
    if settings.objective == "ope":
        return _last_eval(job_dir)
    report = read_report(job_dir)
    if settings.objective == "behavior":
        loss = (report.get("behavior") or {}).get("valid_loss")
        return None if loss is None else float(loss)
    value = _trained_mean(report, "simulator", "return")
    return None if math.isnan(value) else value


def ground_truth(job_dir: Path) -> tuple[float, float]:
    """(return, share of the oracle) of the trained policy in the ground truth, NaN when absent."""
    report = read_report(job_dir)
    return (_trained_mean(report, "ground_truth", "return"),
            _trained_mean(report, "ground_truth", "oracle_share"))


def tell(study: optuna.Study, trial: optuna.Trial, job_dir: Path, settings: SearchSettings) -> str:
    """Tell the study how the trial's job ended; return its status."""
    import optuna

    status = job_status(job_dir)
    value = objective_value(job_dir, settings) if status.status == OK else None
    if status.status == PRUNED:
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    elif value is None or not math.isfinite(value):
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        if status.status == OK:  # finished without an objective: a failure of the search's own
            status = JobStatus(FAILED, 1, f"no {settings.objective} objective in {job_dir}")
            status.write(job_dir)
    else:
        study.tell(trial, value)
    return status.status


# ---------------------------------------------------------------------- the sweep
def run_search(config: DictConfig, launcher: Any, arguments: Sequence[str]) -> list[Any]:
    """Run the search of ``config.search`` with ``launcher``; write ``trials.csv`` and
    ``search.md`` into the sweep folder; return the jobs' results."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # recrl logs each trial itself
    if config.get("search") is None:
        raise RecrlError("hydra/sweeper=recrl_optuna needs a search space: add search=<name> (conf/search/)")
    settings = search_settings(config)
    name = study_name(config, settings)
    sweep_dir = resumed_sweep_dir(config, name) if settings.resume else Path(config.hydra.sweep.dir)
    with open_dict(config):
        config.hydra.sweep.dir = str(sweep_dir)  # the summary callback reads it after the sweep
    sweep_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(config, sweep_dir / "multirun.yaml")
    dims, fixed = parse_space(OmegaConf.to_container(config.search.space) or {}, arguments)
    if not dims:
        raise RecrlError("the search space is empty: list keys under search.space or give key=interval(a,b)")
    url = storage_url(sweep_dir)
    study = create_study(settings, name, url, settings.resume)
    batch_size = settings.parallel or int(config.hydra.launcher.get("n_jobs", 1) or 1)
    into = [f"hydra.sweep.dir='{sweep_dir}'"] if settings.resume else []  # jobs beside the resumed study
    logger.info("search %s: %d trials of %s (%s %s), %d at a time, study in %s", name, settings.trials,
                ", ".join(d.key for d in dims), settings.direction, settings.objective, batch_size, url)
    results: list[Any] = []
    while (left := settings.trials - finished_trials(study)) > 0:
        trials = [study.ask() for _ in range(min(batch_size, left))]
        batch = [[*trial_overrides(t, dims, fixed, settings, url, name), *into] for t in trials]
        returns = launcher.launch(batch, initial_job_idx=trials[0].number)
        for trial, ret in zip(trials, returns, strict=True):
            job_dir = Path(ret.hydra_cfg.hydra.runtime.output_dir)
            status = tell(study, trial, job_dir, settings)
            value = objective_value(job_dir, settings) if status == OK else None
            logger.info("search %s: trial %d %s, %s %s", name, trial.number, status, settings.objective,
                        _fmt(value))
            if status == INTERRUPTED:
                raise KeyboardInterrupt
        results.append(returns)
    write_search_summary(study, sweep_dir, settings)
    return results


def _fmt(value: float | None) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.4f}"


def trial_rows(study: optuna.Study, sweep_dir: Path) -> list[dict[str, Any]]:
    """One dict per trial: number, state, objective, ground truth, share of the oracle, params."""
    rows = []
    for trial in study.get_trials(deepcopy=False):
        truth, share = ground_truth(sweep_dir / str(trial.number))
        seconds = trial.duration.total_seconds() if trial.duration is not None else math.nan
        rows.append({"trial": trial.number, "state": trial.state.name.lower(),
                     "objective": math.nan if trial.value is None else trial.value,
                     "ground_truth": truth, "oracle_share": share, "seconds": seconds, **trial.params})
    return rows


def write_search_summary(study: optuna.Study, sweep_dir: Path, settings: SearchSettings) -> None:
    """``trials.csv`` (every trial) and ``search.md`` (the best trial beside its ground truth)."""
    import pandas as pd

    rows = trial_rows(study, sweep_dir)
    frame = pd.DataFrame(rows)
    write_text_atomic(sweep_dir / "trials.csv", frame.to_csv(index=False))
    params = [c for c in frame.columns if c not in TRIAL_COLUMNS]
    states = ", ".join(f"{n} {state}" for state, n in frame["state"].value_counts().items())
    lines = [f"# Search `{study.study_name}`", "",
             f"{len(rows)} trials ({states}); "
             f"objective: {settings.objective} ({settings.direction}), never the ground truth; the ground "
             "truth is shown beside it to make overfitting to the objective visible."]
    complete = [r for r in rows if r["state"] == "complete"]
    if complete:
        best = study.best_trial
        truth, share = ground_truth(sweep_dir / str(best.number))
        overrides = " ".join(f"{k}={format_value(v)}" for k, v in best.params.items())
        lines += ["", f"Best trial: {best.number}, objective {best.value:.4f}, ground truth {_fmt(truth)}"
                  f" ({_fmt(share)} of the oracle).", "", f"Its overrides: `{overrides}`"]
    sign = -1.0 if settings.direction == "maximize" else 1.0
    ordered = sorted(rows, key=lambda r: (r["state"] != "complete", sign * r["objective"]))
    header = [*TRIAL_COLUMNS, *params]
    table = [[_cell(r.get(c)) for c in header] for r in ordered]
    lines += ["", "## Trials (best first)", "", markdown_table(header, table, right_from=2)]
    write_text_atomic(sweep_dir / "search.md", "\n".join(lines) + "\n")
    logger.info("search %s: %d trials; wrote %s", study.study_name, len(rows), sweep_dir / "search.md")


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "–" if not math.isfinite(value) else f"{value:.4g}"
    return str(value)
