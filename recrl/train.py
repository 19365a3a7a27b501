"""``train(cfg)``: logs -> behavior model -> simulator -> algorithm -> evaluation -> report."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

import recrl
from recrl import kernels
from recrl.algos.planner import missing_methods
from recrl.checkpoint import load_checkpoint, save_checkpoint
from recrl.config import build, validate
from recrl.data.synthetic import HistoryBelief, SyntheticWorld
from recrl.distributed import release
from recrl.evaluate import Evaluation, final_report, ope_settings
from recrl.metrics.stats import set_seed
from recrl.ope.evaluation import OPESelection
from recrl.report import RunLogger, plot_learning_curves, print_report_table, write_report
from recrl.search import trial_reporter
from recrl.stages import GymStages, Stages, build_stages, gym_stages, is_gym
from recrl.types import RecrlError

logger = logging.getLogger(__name__)


def train_in_ground_truth(cfg: DictConfig, stages: Stages, trainer: Any, evaluation: Evaluation,
                          log: Callable[[int, dict[str, float]], None] | None = None) -> Any | None:
    """``eval.train_in_ground_truth=true`` (research only): the run's algorithm trained with the
    same config, seed and budget in the ground-truth environment instead of the simulator. It
    shows what the learner can find when the simulator is not in the way: a learner that takes
    the planner's demonstrations gets them from a planner on the ground truth's own dynamics
    (:func:`truth_planning_model`; ``eval.ground_truth_demonstrator=behavior``: on the fitted
    model, as in the simulator). ``None`` for
    algorithms that never act during training (offline, baselines). ``log`` receives its
    training metrics (``eval/return``: in the ground truth), keys prefixed with
    ``trained_in_ground_truth/``."""
    if stages.ground_truth is None:
        raise RecrlError("eval.train_in_ground_truth=true needs a dataset with a ground truth "
                         "(dataset=synthetic, or coat with its randomized test set)")
    algo = stages.build_algo(cfg.algo)
    if algo.mode in ("none", "offline"):
        logger.info("eval.train_in_ground_truth: %s learns from logs only; skipped", cfg.algo._target_)
        return None
    env, check_env = stages.make_env(stages.ground_truth), stages.make_env(stages.ground_truth)
    demos = getattr(algo, "demos", None)
    if demos is not None and evaluation.ground_truth_demonstrator == "truth":
        model = truth_planning_model(stages.ground_truth, env)
        if model is None:
            logger.info("eval.train_in_ground_truth: the ground truth has no state to plan with; its "
                        "demonstrations come from the behavior model")
        else:
            demos.plan_on(model)
    logger.info("training the same algorithm in the ground truth (eval.train_in_ground_truth)")
    def check() -> dict[str, float]:
        return {"eval/return": evaluation.mean_return(algo, check_env, trainer.eval_episodes)}

    def prefixed(step: int, metrics: dict[str, float]) -> None:
        if log is not None:
            log(step, {f"trained_in_ground_truth/{key}": value for key, value in metrics.items()})

    trainer.fit(algo, env, evaluate=check, log=prefixed, save=lambda tag, step: None, seed=cfg.seed)
    return algo


def truth_planning_model(world: Any, env: Any) -> Any:
    """What a planner in the ground-truth environment ``env`` plans with: the synthetic world's
    own dynamics with the user state estimated from the history
    (:class:`~recrl.data.synthetic.HistoryBelief`), or a ground truth that is itself a fitted
    sequential model (Coat's) as it is; ``None`` for one a planner cannot step."""
    if isinstance(world, SyntheticWorld):
        return HistoryBelief(world, env.choice)
    return None if missing_methods(world) else world


def starting_policy(algo: Any) -> dict[str, Any]:
    """The report row of the frozen policy a run started from (``algo.init_from``): ``supervised``
    for a pretrained next-item model, ``pretrained`` for another source; none otherwise."""
    pretrained = getattr(algo, "pretrained_policy", None)
    row = pretrained() if pretrained is not None else None
    return {} if row is None else {row[0]: row[1]}


def selection_check(cfg: DictConfig, stages: Stages | GymStages, algo: Any, evaluation: Evaluation,
                    trainer: Any) -> Callable[[], dict[str, float]]:
    """The training-time evaluation whose ``eval/return`` picks ``best.pt`` (``trainer.select_by``):
    episodes in a fresh simulator or the ensemble's held-out member, or the off-policy estimate
    ``ope.column`` on the validation split's logged sessions (never the test split, never the
    ground truth)."""
    if trainer.select_by != "ope":
        env = stages.selection_env(trainer.select_by)
        return lambda: {"eval/return": evaluation.mean_return(algo, env, trainer.eval_episodes)}
    if isinstance(stages, GymStages):
        raise RecrlError("trainer.select_by=ope needs logged data (not in gym runs); "
                         "use trainer.select_by=simulator")
    selection = OPESelection(ope_settings(cfg), stages)
    return lambda: {"eval/return": selection(algo)}


def use_best_checkpoint(algo: Any, path: Path) -> None:
    """``eval.policy=best``: evaluate the weights of ``best.pt`` (picked by ``trainer.select_by``)
    instead of the last ones; the last ones stay when no evaluation ever saved a best."""
    if not path.is_file():
        logger.warning("eval.policy=best: no %s (no training-time evaluation ran); evaluating the last "
                       "policy", path)
        return
    algo.load_state_dict(load_checkpoint(path)["algo"])
    logger.info("evaluating the policy of %s (eval.policy=best)", path)


RESUME_FIXED = ("dataset", "behavior", "env", "reward", "algo")


def resume_checkpoint(cfg: DictConfig) -> dict[str, Any]:
    """The checkpoint named by ``resume`` (run folder or ``.pt``), checked against this run's
    config: data, behavior model, environment, reward and algorithm must be the same."""
    payload = load_checkpoint(cfg.resume)
    saved = OmegaConf.create(payload.get("config", ""))
    for key in RESUME_FIXED:
        if key not in saved or OmegaConf.to_container(saved[key], resolve=True) != OmegaConf.to_container(
                cfg[key], resolve=True):
            raise RecrlError(f"resume={cfg.resume}: its {key} settings differ from this run's; only trainer, "
                             "eval and seed settings may change when resuming")
    return payload


def restore_training_state(payload: dict[str, Any], algo: Any, env: Any) -> None:
    """Weights, optimizer, counters and random-number streams of a checkpoint (algorithm,
    global torch RNG and the training environment's generator)."""
    try:
        algo.load_state_dict(payload["algo"])
    except (RuntimeError, KeyError, ValueError) as err:
        first = str(err).splitlines()[0]
        raise RecrlError(f"resume: the checkpoint does not fit the algorithm: {first}") from err
    torch.set_rng_state(payload["torch_rng"].cpu())
    env.generator.set_state(payload["env_rng"].cpu())


@dataclass
class TrainedRun:
    """What :func:`train` hands back besides the run folder: the built stages (data, behavior
    model, environments' context), the trained algorithm and the final report."""

    stages: Stages | GymStages
    algo: Any
    report: dict[str, Any]


def train(cfg: DictConfig, run_dir: Path, algo_name: str) -> TrainedRun:
    """Run the whole pipeline for one configuration and write the run folder."""
    t0 = time.perf_counter()
    validate(cfg)
    set_seed(cfg.seed)
    trainer = build(cfg.trainer)
    resumed = resume_checkpoint(cfg) if cfg.get("resume") else None
    stages = (gym_stages(cfg, trainer.device) if is_gym(cfg)
              else build_stages(cfg, trainer.device, behavior_state=resumed and resumed["behavior"]))
    release()  # torchrun: the behavior models are fitted, ranks > 0 may exit (recrl.distributed)
    t_fit = time.perf_counter()
    algo = stages.build_algo(cfg.algo)
    evaluation: Evaluation = build(cfg.eval)
    select_by = trainer.select_by
    train_env = stages.training_env(select_by)
    check = trial_reporter(cfg, selection_check(cfg, stages, algo, evaluation, trainer))  # search: pruning
    if resumed is not None:
        restore_training_state(resumed, algo, train_env)
    config_yaml = OmegaConf.to_yaml(cfg, resolve=True)

    def save(tag: str, step: int, trained: Any = None) -> None:
        """Write ``checkpoints/<tag>.pt`` of the run's algorithm (or of ``trained``, another copy
        of it, such as the one trained in the ground truth)."""
        save_checkpoint(run_dir / "checkpoints" / f"{tag}.pt",
                        {"algo": (algo if trained is None else trained).state_dict(), **stages.saved_state(),
                         "step": step, "config": config_yaml, "algo_name": algo_name,
                         "run_dir": str(run_dir), "recrl_version": recrl.__version__,
                         "torch_rng": torch.get_rng_state(),
                         "env_rng": train_env.generator.get_state()})

    logger = RunLogger(run_dir)
    try:
        stats = trainer.fit(algo, train_env, evaluate=check, log=logger.log, save=save, seed=cfg.seed,
                            start_step=int(resumed["step"]) if resumed else 0)
        t_train = time.perf_counter()
        extra = starting_policy(algo)
        if evaluation.train_in_ground_truth and not is_gym(cfg):
            in_truth = train_in_ground_truth(cfg, stages, trainer, evaluation, log=logger.log)
            if in_truth is not None:
                extra["trained_in_ground_truth"] = in_truth
                # for inspection: recrl eval checkpoint=<run>/checkpoints/trained_in_ground_truth.pt
                save("trained_in_ground_truth", stats.env_steps, trained=in_truth)
    finally:
        logger.close()
    if evaluation.policy == "best":
        use_best_checkpoint(algo, run_dir / "checkpoints" / "best.pt")
    report = final_report(stages, algo, algo_name, run_dir, extra)
    report["training"] = {"env_steps": stats.env_steps, "user_steps": stats.user_steps,
                          "updates": stats.updates, "best_eval_return": stats.best_eval_return,
                          "select_by": trainer.select_by, "evaluated_policy": evaluation.policy,
                          "user_steps_per_s": stats.user_steps / max(stats.seconds, 1e-9)}
    if getattr(algo, "init_from", None):
        report["init_from"] = algo.init_from
    report["timings"] = {"behavior_fit_s": t_fit - t0, "train_s": t_train - t_fit,
                         "eval_s": time.perf_counter() - t_train, "total_s": time.perf_counter() - t0}
    report["native_search_users"] = kernels.search_counts()  # training and evaluation together
    plot_learning_curves(run_dir / "metrics.jsonl", run_dir / "plots" / "learning_curve.png")
    write_report(run_dir, report)
    print_report_table(report)
    return TrainedRun(stages=stages, algo=algo, report=report)
