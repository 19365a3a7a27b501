"""The ``recrl`` command: ``recrl train|eval|sweep [key=value ...]`` (Hydra at the edge), ``recrl compare``.

Overrides are checked before anything runs: an unknown option, key or badly typed value
prints one line and exits with code 2 (set ``RECRL_DEBUG=1`` for tracebacks). SIGINT (Ctrl-C)
and SIGTERM stop a run between two Python steps, whatever handling the process inherited (a job
started in the background by a non-interactive shell ignores SIGINT): checkpoints already
written stay intact, one line says so, and the exit code is 130 (SIGINT) or 143 (SIGTERM).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import hydra
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Glob, IntervalSweep, Override
from hydra.errors import HydraException, MissingConfigException, OverrideParseException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from recrl.checkpoint import resolve_checkpoint
from recrl.config import CONF_DIR, RENAMED_KEYS, compose_config, validate
from recrl.memory import keep_freed_memory_as_configured
from recrl.sweep import FAILED, INTERRUPTED, OK, PRUNED, JobStatus
from recrl.types import Pruned, RecrlError

USAGE = """usage: recrl <command> [key=value ...]

commands:
  train   run the whole pipeline once          recrl train algo=dqn reward=ctr
  eval    re-evaluate a saved run              recrl eval checkpoint=outputs/train/<run>
          or only the behavior model           recrl eval behavior-only dataset=beauty behavior=sasrec
          or only the off-policy estimates     recrl eval ope checkpoint=<run> [ope.estimators=[ips,wpdis]]
  sweep   Hydra multirun + a summary table     recrl sweep algo=dqn,reinforce seed=0,1,2
          an Optuna search (conf/search/)      recrl sweep search=dqn search.trials=30
          (re)summarize a sweep folder         recrl sweep summarize outputs/train/multirun/<ts>
  compare one Markdown + HTML page of runs     recrl compare <run or sweep folders...> [--out DIR]
  data    prepare / describe / download data   recrl data info dataset=ml100k
          recrl data prepare dataset=coat      recrl data download ml100k [--data-dir DIR]

options live in conf/: dataset, behavior, env, reward, algo, trainer, eval, ope, experiment, search
"""
COMMANDS = {"train": "train", "eval": "eval", "sweep": "train", "data": "train"}
OTHER_COMMANDS = ("compare",)  # not Hydra jobs
COMPARE_USAGE = """usage: recrl compare <run or sweep folders...> [--out DIR]

Writes compare.md, compare.html and PNG figures (learning curves, return per policy and
environment, simulator vs ground truth, paired differences across seeds) into DIR
(default: outputs/compare/<timestamp>).
"""
DATA_COMMANDS = ("info", "prepare", "download")
MAX_CHECKED_COMBINATIONS = 64
INTERRUPT_EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}  # 128 + the signal's number

logger = logging.getLogger("recrl.cli")  # not __main__ under `python -m recrl.cli`


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C's :class:`KeyboardInterrupt` so the same clean-up runs."""

    signum = signal.SIGTERM


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated()


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGINT raises :class:`KeyboardInterrupt` and SIGTERM :class:`Terminated` inside the
    block, even where the process inherited them ignored; the previous handlers come back after.
    Only the main thread can install handlers: elsewhere the block runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in INTERRUPT_EXIT}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


def _interrupt_code(stop: KeyboardInterrupt) -> int:
    """130 for Ctrl-C (SIGINT), 143 for SIGTERM."""
    return INTERRUPT_EXIT[getattr(stop, "signum", signal.SIGINT)]


def _interrupt_message(stop: KeyboardInterrupt) -> str:
    return "terminated (SIGTERM)" if isinstance(stop, Terminated) else "interrupted"


def _debug() -> bool:
    return os.environ.get("RECRL_DEBUG", "") not in ("", "0")


def _fail(message: str, code: int) -> int:
    print(f"recrl: error: {message}", file=sys.stderr)
    return code


def _group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def explain_compose_error(err: Exception, override_text: str) -> str:
    """One line for a Hydra composition error (``{command}`` stands for the command run)."""
    text = str(err)
    if isinstance(err, MissingConfigException) or "Could not find" in text:
        for override in override_text.split():
            key, _, value = override.partition("=")
            group = key.lstrip("+~")
            if (CONF_DIR / group).is_dir() and value not in _group_options(group):
                return (f"unknown option {group}={value}; valid options for {group}: "
                        f"{', '.join(_group_options(group))}")
    first = text.strip().splitlines()[0] if text.strip() else type(err).__name__
    if "Could not override" in first:
        key = first.split("'")[1] if "'" in first else first
        if key in RENAMED_KEYS:
            return f"{key} is now {RENAMED_KEYS[key]}"
        return f"unknown key {key} (check the spelling; `recrl {{command}} --cfg job` shows all keys)"
    return first


def _checked_values(override: Override) -> list[str] | None:
    """The values the pre-check composes for one override, or ``None`` to leave it to the sweeper.

    Every value of a list, ``choice`` or ``range`` sweep; both ends of an ``interval`` (the key
    exists and takes numbers; the search space itself is the sweeper's); every group option a
    ``glob`` matches. The overrides themselves reach Hydra's sweeper untouched.
    """
    if not override.is_sweep_override():
        return [override.get_value_element_as_str()]
    sweep = override.value()
    if isinstance(sweep, IntervalSweep):
        return [str(sweep.start), str(sweep.end)]
    if isinstance(sweep, Glob):
        group = override.get_key_element().lstrip("+~")
        return sweep.filter(_group_options(group)) if (CONF_DIR / group).is_dir() else None
    try:
        return list(override.sweep_string_iterator())
    except (HydraException, ValueError, TypeError):
        return None


def _combinations(overrides: list[str]) -> list[list[str]]:
    """Expand sweep overrides (``a=1,2``) into the single-valued override lists they stand for
    (:func:`_checked_values`; an override the pre-check cannot expand is left out)."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    choices = []
    for o in parsed:
        key = o.get_key_element()  # with its prefix: "+key", "~key"
        if o.is_delete() and o.value() is None:  # ~key: drop it, whatever its value
            choices.append([key])
            continue
        values = _checked_values(o)
        if values is not None:
            choices.append([f"{key}={v}" for v in values])
    return [list(c) for c in itertools.islice(itertools.product(*choices), MAX_CHECKED_COMBINATIONS)]


def _check_sweeper_syntax(config_name: str, overrides: list[str], combo: list[str]) -> None:
    """A search-only sweep (``interval(...)``) with the grid sweeper fails here in one line
    (``combo``: one expanded combination of ``overrides``, to learn the sweeper)."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    searched = [o.input_line for o in parsed if isinstance(o.value(), IntervalSweep)]
    if not searched:
        return
    sweeper = compose_config(config_name, combo, return_hydra_config=True).hydra.sweeper
    if "BasicSweeper" in str(sweeper.get("_target_", "")):
        searches = "|".join(_group_options("search"))
        raise RecrlError(f"{searched[0]}: interval() needs a search, not a grid: add search=<{searches}> "
                         "(README \"Search and scale\"), or list values (key=a,b,c)")


def compose_with_choices(config_name: str, overrides: list[str]) -> tuple[DictConfig, dict[str, str]]:
    """Compose one configuration and validate it (one-line errors naming ``recrl
    <config_name>``); also return the option chosen in every config group."""
    try:
        cfg = compose_config(config_name, overrides, return_hydra_config=True)
    except (HydraException, OmegaConfBaseException) as err:
        raise RecrlError(explain_compose_error(err, " ".join(overrides)).replace("{command}", config_name)) \
            from err
    choices = {str(k): str(v) for k, v in cfg.hydra.runtime.choices.items() if v is not None}
    with open_dict(cfg):
        del cfg["hydra"]
    validate(cfg)
    return cfg, choices


def compose_checked(config_name: str, overrides: list[str]) -> DictConfig:
    """Compose one configuration and validate it (one-line errors)."""
    return compose_with_choices(config_name, overrides)[0]


def _check_data_files(cfg: DictConfig) -> None:
    """Fail before any run folder exists when a file-backed dataset's files are missing."""
    from recrl.config import build

    dataset = build(cfg.dataset)
    if hasattr(dataset, "check_files"):
        dataset.check_files()


def check_overrides(config_name: str, overrides: list[str]) -> None:
    """Compose and validate the config for every combination of the overrides."""
    try:
        combos = _combinations(overrides)
    except OverrideParseException as err:
        raise RecrlError(f"cannot parse overrides: {str(err).splitlines()[0]}") from err
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for combo in combos:
            try:
                cfg = compose(config_name=config_name, overrides=combo)
            except (HydraException, OmegaConfBaseException) as err:
                raise RecrlError(explain_compose_error(err, " ".join(combo))) from err
            if config_name == "train":
                validate(cfg)
                _check_data_files(cfg)
                for where in (cfg.eval.get("ground_truth"), cfg.get("resume")):
                    if where:
                        resolve_checkpoint(where)
            else:
                if OmegaConf.is_missing(cfg, "checkpoint"):
                    raise RecrlError("recrl eval needs checkpoint=<run folder or .pt file>")
                if cfg.get("eval", {}).get("ground_truth"):
                    raise RecrlError("recrl eval: eval.ground_truth is the run's own (its environments are "
                                     "rebuilt from the checkpoint); train a run with eval.ground_truth=<run>")
                resolve_checkpoint(cfg.checkpoint)
    if config_name == "train" and combos:
        _check_sweeper_syntax(config_name, overrides, combos[0])


def _task(cfg: DictConfig) -> int:
    """Body of every Hydra job: run the task, record how it ended in the job's ``status.json``
    (:class:`recrl.sweep.JobStatus`) and turn a failure into one line and an exit code.

    A single run exits with that code. In a multirun a failed job returns it instead, so the
    other jobs still run and the summary is written; ``recrl sweep`` then exits non-zero. An
    interrupt (Ctrl-C, SIGTERM) stops the whole sweep.
    """
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    threads = OmegaConf.select(cfg, "trainer.threads")
    if threads:
        torch.set_num_threads(int(threads))
    keep_freed_memory_as_configured(cfg)
    start = time.perf_counter()
    status = _run_task(cfg, run_dir, hc.runtime.choices.get("algo"))
    dataclasses.replace(status, seconds=time.perf_counter() - start).write(run_dir)
    if status.exit_code and (hc.mode != RunMode.MULTIRUN or status.status == INTERRUPTED):
        sys.exit(status.exit_code)
    return status.exit_code


def _run_task(cfg: DictConfig, run_dir: Path, algo_name: str | None) -> JobStatus:
    """How the job's task ended, its failure logged in one line (``RECRL_DEBUG=1`` re-raises)."""
    from recrl.evaluate import evaluate, evaluate_behavior, evaluate_ope
    from recrl.train import train

    try:
        if cfg.task == "eval":
            evaluate(cfg, run_dir)
        elif cfg.task == "ope":
            evaluate_ope(cfg, run_dir)
        elif cfg.task == "behavior":
            evaluate_behavior(cfg, run_dir)
        else:
            train(cfg, run_dir, algo_name=algo_name)
    except Pruned as stop:
        logger.info("%s", stop)
        return JobStatus(PRUNED, 0, str(stop))
    except RecrlError as err:
        if _debug():
            raise
        return JobStatus(FAILED, _fail_run(str(err), 2), str(err))
    except KeyboardInterrupt as stop:
        message = (f"{_interrupt_message(stop)}; checkpoints already written in "
                   f"{run_dir / 'checkpoints'} are intact")
        return JobStatus(INTERRUPTED, _fail_run(message, _interrupt_code(stop)), message)
    except Exception as err:
        if _debug():
            raise
        message = f"{type(err).__name__}: {err}"
        return JobStatus(FAILED, _fail_run(f"{message} (set RECRL_DEBUG=1 for the traceback)", 1), message)
    return JobStatus(OK, 0)


def _fail_run(message: str, code: int) -> int:
    """:func:`_fail`, with the line also in the run's log file (not twice on the console)."""
    logger.error("%s (exit code %d)", message, code, extra={"console": False})
    return _fail(message, code)


def _run_hydra(config_name: str, overrides: list[str], multirun: bool) -> None:
    from recrl import distributed

    if not distributed.is_main():  # torchrun rank > 0: no Hydra, no run folder; helps fit (recrl.distributed)
        from recrl.behavior.fit import serve_fits

        serve_fits()
        # leave without the interpreter's teardown: destroying gloo's threads there sometimes
        # ends in std::terminate (SIGABRT) after the work is done, which fails the whole job
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    entry: Callable[[], None] = hydra.main(config_path=str(CONF_DIR), config_name=config_name,
                                           version_base="1.3")(_task)
    saved = sys.argv
    sys.argv = ["recrl", *overrides, *(["--multirun"] if multirun else [])]
    try:
        entry()
    finally:
        sys.argv = saved
        distributed.release()  # torchrun: let ranks > 0 exit, however the run ended (no-op otherwise)


def data_command(args: list[str]) -> int:
    """``recrl data info|prepare [overrides]`` and ``recrl data download NAME``."""
    from recrl.config import build
    from recrl.data import download
    from recrl.data.summary import describe, print_description

    if not args or args[0] not in DATA_COMMANDS:
        return _fail(f"use `recrl data {{{'|'.join(DATA_COMMANDS)}}} ...`", 2)
    if args[0] == "download":
        return download.main(args[1:])
    try:
        cfg = compose_checked("train", args[1:])
        dataset = build(cfg.dataset)
        splits = dataset.load()
    except RecrlError as err:
        if _debug():
            raise
        return _fail(str(err), 2)
    load = getattr(dataset, "last_load", {})
    print_description(describe(splits), load=load)
    if args[0] == "prepare" and load.get("folder"):
        print(f"prepared: {load['folder']}")
    return 0


def summarize_command(args: list[str]) -> int:
    """``recrl sweep summarize DIR``: rebuild ``summary.csv``/``summary.md`` from a sweep's job folders.

    For a sweep that was interrupted, or one whose jobs ran elsewhere.
    """
    from recrl.sweep import summarize_sweep

    if len(args) != 1:
        return _fail("use `recrl sweep summarize <sweep folder>` (one folder)", 2)
    sweep_dir = Path(args[0])
    if not sweep_dir.is_dir():
        return _fail(f"sweep folder {sweep_dir} does not exist", 2)
    if summarize_sweep(sweep_dir) is None:
        return _fail(f"no job under {sweep_dir} has a report.json with evaluation results", 2)
    return 0


def _compare_args(args: list[str]) -> tuple[list[Path], Path | None]:
    """(folders, ``--out`` folder or ``None``) of ``recrl compare``; ``RecrlError`` on bad options."""
    folders: list[Path] = []
    out: Path | None = None
    rest = iter(args)
    for arg in rest:
        if arg == "--out" or arg.startswith("--out="):
            value = arg.partition("=")[2] if "=" in arg else next(rest, "")
            if not value:
                raise RecrlError("--out needs a folder: `recrl compare <folders...> --out DIR`")
            out = Path(value)
        elif arg.startswith("-"):
            raise RecrlError(f"unknown option {arg} for recrl compare (only --out DIR)")
        else:
            folders.append(Path(arg))
    if not folders:
        raise RecrlError("use `recrl compare <run or sweep folders...> [--out DIR]`")
    return folders, out


def compare_command(args: list[str]) -> int:
    """``recrl compare <run or sweep folders...> [--out DIR]``: one Markdown and one HTML page
    comparing the runs (see :mod:`recrl.compare`)."""
    if any(a in ("-h", "--help") for a in args):
        print(COMPARE_USAGE)
        return 0
    from recrl.compare import compare, default_out_dir

    try:
        folders, out = _compare_args(args)
        md_path, html_path, n_runs, n_configs = compare(folders, out or default_out_dir())
    except RecrlError as err:
        if _debug():
            raise
        return _fail(str(err), 2)
    print(f"compared {n_runs} runs ({n_configs} configurations): wrote {html_path} and {md_path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``recrl`` console script; returns the exit code (130 after SIGINT,
    143 after SIGTERM, see :func:`stop_on_signals`)."""
    with stop_on_signals():
        try:
            return _main(argv)
        except KeyboardInterrupt as stop:  # outside a run (checking overrides, loading data)
            return _fail(_interrupt_message(stop), _interrupt_code(stop))


def _main(argv: list[str] | None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    command, overrides = args[0], args[1:]
    if command == "compare":
        return compare_command(overrides)
    if command not in COMMANDS:
        return _fail(f"unknown command {command!r}; use one of: {', '.join([*COMMANDS, *OTHER_COMMANDS])}", 2)
    if command == "data":
        return data_command(overrides)
    if command == "sweep" and overrides[:1] == ["summarize"]:
        return summarize_command(overrides[1:])
    config_name = COMMANDS[command]
    if command == "eval" and overrides[:1] == ["behavior-only"]:  # fit/load + offline + fidelity
        config_name, overrides = "train", [*overrides[1:], "task=behavior"]
    if command == "eval" and overrides[:1] == ["ope"]:  # only the off-policy estimates of a saved run
        overrides = [*overrides[1:], "task=ope"]
    passthrough = any(o.startswith("-") for o in overrides)  # hydra flags such as --cfg job
    if not passthrough:
        try:
            check_overrides(config_name, overrides)
        except RecrlError as err:
            if _debug():
                raise
            return _fail(str(err).replace("{command}", command), 2)
    if command == "sweep":
        overrides = [*overrides, *launcher_overrides(overrides)]
    _run_hydra(config_name, overrides, multirun=command == "sweep")
    return _sweep_exit_code() if command == "sweep" else 0


# where each launcher takes the CPU cores a job asks for (trainer.threads)
LAUNCHER_CPUS = {"submitit_slurm": "hydra.launcher.cpus_per_task",
                 "submitit_local": "hydra.launcher.cpus_per_task",
                 "ray": "+hydra.launcher.ray.remote.num_cpus"}
RAY_ADDRESS, RAY_STORE = "hydra.launcher.ray.init.address", "hydra.launcher.ray.init.object_store_memory"


def launcher_overrides(overrides: list[str]) -> list[str]:
    """What a sweep adds for its launcher, unless the command line already says it: with
    ``trainer.threads=N`` and a Ray or submitit launcher, N cores reserved per job; with a Ray
    cluster's address, no object-store size (hydra-ray-launcher sets one, which Ray refuses when
    joining a running cluster).

    Example::

        >>> launcher_overrides(["hydra/launcher=ray", "trainer.threads=4"])
        ['+hydra.launcher.ray.remote.num_cpus=4']
        >>> launcher_overrides(["hydra/launcher=joblib", "trainer.threads=4"])
        []
    """
    given = {k.lstrip("+"): v for k, _, v in (o.partition("=") for o in overrides)}
    added = []
    key = LAUNCHER_CPUS.get(given.get("hydra/launcher", ""))
    if key is not None and given.get("trainer.threads", "").isdigit() and key.lstrip("+") not in given:
        added.append(f"{key}={given['trainer.threads']}")
    if given.get(RAY_ADDRESS) and RAY_STORE not in given:
        added.append(f"+{RAY_STORE}=null")
    return added


def _sweep_exit_code() -> int:
    """1 (with one line naming them) when jobs of the sweep that just ran failed, else 0."""
    from recrl.sweep import LAST_SWEEP

    if not LAST_SWEEP or not LAST_SWEEP[0].failed:
        return 0
    outcome = LAST_SWEEP[0]
    return _fail(f"{len(outcome.failed)} of {outcome.n_jobs} jobs failed (job {', '.join(outcome.failed)}); "
                 f"their errors are in {outcome.sweep_dir / 'summary.md'} and each job's status.json", 1)


if __name__ == "__main__":
    sys.exit(main())
