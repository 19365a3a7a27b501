"""Evaluation: score policies in every environment, write a run's final report, and
re-evaluate a saved run (``recrl eval``, ``recrl eval behavior-only``)."""

from __future__ import annotations

import json
import logging
import platform
import time
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import Tensor

import recrl
from recrl import kernels
from recrl.algos.oracle import Oracle, can_plan
from recrl.behavior.fidelity import fidelity_report
from recrl.behavior.offline import RANKING_SPLITS, offline_ranking, policy_ranking
from recrl.cachelock import build_once
from recrl.checkpoint import load_checkpoint, resolve_checkpoint
from recrl.config import build, build_algo_by_name, migrate_renamed_keys, validate
from recrl.loop import resolve_device
from recrl.metrics.online import run_episodes
from recrl.metrics.stats import set_seed
from recrl.ope.evaluation import OffPolicyEvaluation, off_policy
from recrl.report import print_report_table, write_json_atomic, write_report
from recrl.stages import GymStages, Stages, build_stages, config_hash, gym_stages, is_gym
from recrl.types import Env, Policy, RecrlError, Splits

logger = logging.getLogger(__name__)
DEMONSTRATORS = ("truth", "behavior")  # eval.ground_truth_demonstrator


class Evaluation:
    """Final evaluation settings (``eval=default``) and the routine that applies them.

    Every policy runs ``episodes`` complete episodes, with exploration off, in every
    environment; users and their random draws depend only on ``seed``, so two evaluations of
    the same policy give the same numbers. (What picks ``best.pt`` is ``trainer.select_by``.)

    Example::

        evaluation = Evaluation(baselines=["random"], episodes=500)
        table = evaluation.run({"dqn": algo}, {"simulator": sim_env, "ground_truth": gt_env})
    """

    def __init__(self, baselines: list[str] | None = None, episodes: int = 1000,
                 batch_size: int = 1000, seed: int = 12345, offline_users: int = 2000,
                 ground_truth: str | None = None, oracle: bool = True, oracle_candidates: int = 4,
                 train_in_ground_truth: bool = False, policy: str = "last",
                 ranking_split: str = "test", ground_truth_demonstrator: str = "truth") -> None:
        if episodes < 2:
            raise RecrlError("eval.episodes must be >= 2 to give a confidence interval")
        if offline_users < 0:
            raise RecrlError("eval.offline_users must be >= 0 (0 turns offline ranking off)")
        self.baselines = list(baselines or [])
        self.episodes, self.batch_size, self.seed = episodes, batch_size, seed
        if oracle_candidates < 1:
            raise RecrlError("eval.oracle_candidates must be >= 1")
        self.offline_users, self.ground_truth = offline_users, ground_truth
        self.oracle, self.oracle_candidates = oracle, oracle_candidates
        self.train_in_ground_truth = train_in_ground_truth
        if ground_truth_demonstrator not in DEMONSTRATORS:
            raise RecrlError(f"eval.ground_truth_demonstrator={ground_truth_demonstrator!r}: use truth (the "
                             "planner plans on the ground truth it trains in) or behavior (on the fitted "
                             "model)")
        self.ground_truth_demonstrator = ground_truth_demonstrator
        if policy not in ("last", "best"):
            raise RecrlError(f"eval.policy={policy!r}: use last (the policy at the end of training) or best "
                             "(checkpoints/best.pt, picked by trainer.select_by)")
        self.policy = policy
        if ranking_split not in RANKING_SPLITS:
            raise RecrlError(f"eval.ranking_split={ranking_split!r}: use test (the held-out test users) "
                             "or valid (the validation rows, to choose settings without the test users)")
        self.ranking_split = ranking_split

    def offline(self, behavior: Any, splits: Any, history_len: int) -> dict[str, dict[str, float]]:
        """Next-item ranking of the behavior model on the ``ranking_split`` rows (up to
        ``offline_users`` users, sampled with ``seed``), under the full and sampled-100 protocols."""
        if self.offline_users == 0 or not hasattr(behavior, "score_all"):
            return {}
        return offline_ranking(behavior, splits, history_len=history_len, max_users=self.offline_users,
                               seed=self.seed, split=self.ranking_split)

    def policy_ranking(self, policies: dict[str, Policy], splits: Splits | None,
                       ctx: Any) -> dict[str, dict[str, float]]:
        """Next-item ranking of the policies with ``scores`` on the users of :meth:`offline`
        (full protocol), each reading the observation it has in the environment (``ctx``'s
        history length, slate size and horizon); ``{}`` when ``offline_users`` is 0, the run has
        no logged test rows or its observations carry features the logs do not give."""
        if (self.offline_users == 0 or splits is None or ctx.obs_features
                or (self.ranking_split == "test" and splits.test.empty)):
            return {}
        start = time.perf_counter()
        section = policy_ranking(policies, splits, history_len=ctx.history_len, horizon=ctx.horizon,
                                 max_users=self.offline_users, seed=self.seed, slate_size=ctx.slate_size,
                                 device=ctx.device, split=self.ranking_split)
        if section:
            logger.info("next-item ranking of %s on the %s users: %.2f s", ", ".join(section),
                        self.ranking_split, time.perf_counter() - start)
        return section

    def policies(self, trained: dict[str, Policy], ctx: Any) -> dict[str, Policy]:
        """``trained`` (the run's policy and any others, by name) followed by every baseline not
        among them, built with the run's context ``ctx``."""
        missing = [name for name in self.baselines if name not in trained]
        return {**trained, **{name: build_algo_by_name(name, ctx=ctx) for name in missing}}

    def mean_return(self, policy: Policy, env: Env, episodes: int) -> float:
        """Mean episode return over ``episodes`` evaluation episodes (training-time checks)."""
        stats = run_episodes(policy, env, episodes, self.seed, self.batch_size)
        return float(stats.returns.mean())

    def run(self, policies: dict[str, Policy], envs: dict[str, Env],
            categories: Tensor | None = None) -> dict[str, dict[str, dict[str, Any]]]:
        """``{env: {policy: {metric: {mean, ci95, n}}}}`` for every pair; ``categories``
        ``[n_items]`` adds the per-session category diversity."""
        logger.info("final evaluation: %s in %s, %d episodes each", ", ".join(policies), ", ".join(envs),
                    self.episodes)
        return {env_name: {name: self.summary(policy, env, categories) for name, policy in policies.items()}
                for env_name, env in envs.items()}

    def summary(self, policy: Policy, env: Env, categories: Tensor | None = None) -> dict[str, Any]:
        """One policy's ``{metric: {mean, ci95, n}}`` in one environment."""
        return run_episodes(policy, env, self.episodes, self.seed, self.batch_size, categories).summary()


def restore_run(checkpoint: str | Path,
                device: str | None = None) -> tuple[Stages | GymStages, Any, dict[str, Any], Path]:
    """A run's stages and trained policy rebuilt from its checkpoint (a run folder or ``.pt``):
    ``(stages, algo, payload, path)``. ``device``: where to rebuild (``None``: the run's own,
    falling back to ``auto`` when it was a GPU)."""
    path = resolve_checkpoint(checkpoint)
    payload = load_checkpoint(path)
    saved = migrate_renamed_keys(OmegaConf.create(payload["config"]))
    if device:
        saved.trainer.device = device
    elif saved.trainer.device.startswith("cuda"):
        saved.trainer.device = "auto"
    validate(saved)
    run_device = resolve_device(saved.trainer.device)
    stages = (gym_stages(saved, run_device) if is_gym(saved)
              else build_stages(saved, run_device, behavior_state=payload["behavior"]))
    algo = stages.build_algo(saved.algo)
    try:
        algo.load_state_dict(payload["algo"])
    except (RuntimeError, KeyError, ValueError) as err:
        first = str(err).strip().splitlines()[0]
        raise RecrlError(f"checkpoint {path} does not fit its config's algorithm: {first}") from err
    return stages, algo, payload, path


def run_settings(saved: DictConfig, cfg: DictConfig, group: str) -> DictConfig:
    """The ``group`` node (``ope`` or ``eval``) ``recrl eval`` uses: the run's own (this
    command's, or its defaults, for runs saved before the group existed) with the ``<group>.*``
    keys given on this command line on top, so an evaluation without them reproduces the run's."""
    source = saved[group] if group in saved else cfg[group]
    node = OmegaConf.create(OmegaConf.to_container(source, resolve=True))
    for key in _command_line_keys(group):
        OmegaConf.update(node, key, OmegaConf.select(cfg[group], key), merge=False)
    return node


def _command_line_keys(group: str) -> list[str]:
    """The ``<group>.<key>`` overrides of the running Hydra job (none outside one)."""
    try:
        overrides = HydraConfig.get().overrides.task
    except ValueError:
        return []
    keys = [o.split("=", 1)[0].lstrip("+~") for o in overrides]
    return [key[len(group) + 1:] for key in keys if key.startswith(f"{group}.")]


def evaluate(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Rebuild a run from its checkpoint's saved config and evaluate it again (``eval.*`` and
    ``ope.*`` keys on the command line replace the run's, e.g. ``eval.ranking_split=valid``).

    With the same seed, device and settings the numbers equal the run's own final evaluation.
    """
    start = time.perf_counter()
    stages, algo, payload, path = restore_run(cfg.checkpoint, cfg.get("device"))
    if not isinstance(stages, GymStages):
        with open_dict(stages.cfg):
            stages.cfg.ope = run_settings(stages.cfg, cfg, "ope")
    with open_dict(stages.cfg):
        stages.cfg.eval = run_settings(stages.cfg, cfg, "eval")
    report = final_report(stages, algo, payload["algo_name"], run_dir)
    report.update(task="eval", checkpoint=str(path), source_run=str(payload.get("run_dir", "")),
                  checkpoint_step=int(payload["step"]))
    report["timings"] = {"total_s": time.perf_counter() - start}
    report["native_search_users"] = kernels.search_counts()
    write_report(run_dir, report)
    print_report_table(report)
    return report


def evaluate_ope(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """``recrl eval ope checkpoint=<run>``: only the off-policy estimates of a saved run's policy
    and its baselines, with the run's ``ope`` settings and this command's ``ope.*`` on top."""
    start = time.perf_counter()
    stages, algo, payload, path = restore_run(cfg.checkpoint, cfg.get("device"))
    if isinstance(stages, GymStages):
        raise RecrlError("recrl eval ope needs a run on logged data; this run trained on a gymnasium env")
    ope: OffPolicyEvaluation = build(run_settings(stages.cfg, cfg, "ope"))
    policies = build(stages.cfg.eval).policies({payload["algo_name"]: algo}, stages.ctx)
    section, column = off_policy(ope, stages, policies)
    report = {"task": "ope", "algo": payload["algo_name"], "checkpoint": str(path),
              "source_run": str(payload.get("run_dir", "")), "checkpoint_step": int(payload["step"]),
              **run_facts(stages.cfg, run_dir, stages.device), "off_policy": section,
              "evaluation": {"ope": column} if column else {},
              "timings": {"total_s": time.perf_counter() - start}}
    write_report(run_dir, report)
    print_report_table(report)
    return report


def add_oracle_share(results: dict[str, dict[str, Any]], oracle: str = "oracle") -> None:
    """Add ``oracle_share`` (return / the oracle's return, CI scaled alike) to every policy of
    every environment in ``results`` that has an ``oracle`` row; in place."""
    for table in results.values():
        if oracle not in table:
            continue
        reference = float(table[oracle]["return"]["mean"])
        if reference <= 0:
            continue
        for stats in table.values():
            ret = stats["return"]
            stats["oracle_share"] = {"mean": float(ret["mean"]) / reference,
                                     "ci95": float(ret["ci95"]) / reference, "n": ret["n"]}


def final_report(stages: Stages | GymStages, algo: Any, algo_name: str, run_dir: Path,
                 extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The final evaluation of ``algo``, the ``extra`` policies and the baselines, with the
    behavior sections (a gymnasium run: ``algo`` and ``random`` on its environment)."""
    if isinstance(stages, GymStages):
        return gym_report(stages, algo, algo_name, run_dir)
    return final_evaluation(stages.cfg, stages, algo, algo_name, run_dir, extra)


def gym_report(stages: GymStages, algo: Any, algo_name: str, run_dir: Path) -> dict[str, Any]:
    """``algo`` and the ``random`` baseline evaluated on a gymnasium run's environment."""
    evaluation: Evaluation = build(stages.cfg.eval)
    policies = {algo_name: algo}
    if algo_name != "random":
        policies["random"] = build_algo_by_name("random", ctx=stages.ctx)
    results = evaluation.run(policies, {"gym": stages.training_env()})
    return {"task": "train", "algo": algo_name, "env": str(stages.cfg.env.id),
            **run_facts(stages.cfg, run_dir, stages.device), "evaluation": results}


def final_evaluation(cfg: DictConfig, stages: Stages, algo: Any, algo_name: str,
                     run_dir: Path, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Evaluate the trained policy, the ``extra`` policies and every baseline in every
    environment; in a ground truth the oracle can plan in, add the oracle row and every
    policy's share of it; rank the test users' next items with every policy that can
    (``policy_ranking``)."""
    evaluation: Evaluation = build(cfg.eval)
    policies = evaluation.policies({algo_name: algo, **(extra or {})}, stages.ctx)
    envs = stages.eval_envs()
    results = evaluation.run(policies, envs, stages.diversity_categories)
    if evaluation.oracle and "ground_truth" in envs and can_plan(stages.ground_truth):
        results["ground_truth"]["oracle"] = oracle_summary(cfg, stages, envs["ground_truth"], evaluation)
        add_oracle_share(results)
    sections = behavior_sections(cfg, stages, evaluation, envs, run_dir, policy=algo)
    ope = ope_settings(cfg)
    if ope.enabled:
        logger.info("off-policy estimates of %s from the test split's logs", ", ".join(policies))
        sections["off_policy"], results["ope"] = off_policy(ope, stages, policies)
    # last: scoring may draw from a policy's generator (random), which must not move the numbers above
    sections["policy_ranking"] = evaluation.policy_ranking(policies, stages.splits, stages.ctx)
    return {"task": "train", "algo": algo_name, "reward": type(stages.reward).__name__, **sections,
            "evaluation": results}


def ope_settings(cfg: DictConfig) -> OffPolicyEvaluation:
    """The run's ``ope`` settings (the defaults for configs saved before it existed)."""
    node = cfg.get("ope")
    return OffPolicyEvaluation() if node is None else build(node)


def oracle_summary(cfg: DictConfig, stages: Stages, env: Env, evaluation: Evaluation) -> dict[str, Any]:
    """The oracle's evaluation in the ground truth (:class:`recrl.algos.oracle.Oracle`), cached
    under ``cache_dir/oracle`` by everything it depends on (world, environment, reward, evaluation
    users, device): a sweep over algorithms and seeds computes it once."""
    settings = OmegaConf.create({"episodes": evaluation.episodes, "seed": evaluation.seed,
                                 "batch_size": evaluation.batch_size, "device": str(stages.device),
                                 "candidates": evaluation.oracle_candidates})
    path = Path(cfg.cache_dir) / "oracle" / f"{config_hash(cfg.dataset, cfg.env, cfg.reward, settings)}.json"

    def load() -> dict[str, Any] | None:
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            logger.warning("oracle cache %s unreadable; recomputing", path)
            return None

    def compute() -> dict[str, Any]:
        logger.info("evaluating the oracle in the ground truth (cached afterwards)")
        oracle = Oracle(stages.ground_truth, stages.reward, env, candidates=evaluation.oracle_candidates)
        summary = evaluation.summary(oracle, env, stages.diversity_categories)
        write_json_atomic(path, summary)
        return summary

    return build_once(path, "oracle evaluation", load, compute)[0]


def behavior_sections(cfg: DictConfig, stages: Stages, evaluation: Evaluation, envs: dict[str, Env],
                      run_dir: Path, policy: Any = None) -> dict[str, Any]:
    """Run facts and everything a report says about the data and the behavior model: its fit,
    offline ranking on the test users and simulator fidelity (also on the slates of the trained
    ``policy``, when given)."""
    fidelity = fidelity_report(stages.behavior, stages.splits, envs.get("ground_truth"),
                               ground_truth_is_true_model=hasattr(stages.dataset, "ground_truth")
                               and not cfg.eval.get("ground_truth"),
                               plot=run_dir / "plots" / "calibration.png", policy=policy)
    return {**run_facts(cfg, run_dir, stages.device), "data": data_summary(stages.splits),
            "behavior": stages.behavior_report,
            "offline": evaluation.offline(stages.behavior, stages.splits,
                                          history_len=getattr(stages.behavior, "max_len", 50)),
            "ranking_split": evaluation.ranking_split,
            "fidelity": fidelity}


def run_facts(cfg: DictConfig, run_dir: Path, device: torch.device) -> dict[str, Any]:
    """Run directory, seed, device, CPU threads, which build of the native search runs
    (``built (avx512bf16)``, ``built (avx512)``, ``built (avx2)`` or why none: greedy acting on a
    CPU from 512 items searches inside the product with it, :func:`recrl.kernels.status`),
    resolved config and versions: the head of every report."""
    return {"run_dir": str(run_dir), "seed": int(cfg.seed), "device": str(device),
            "threads": torch.get_num_threads(), "native_search": kernels.status(),
            "config": OmegaConf.to_container(cfg, resolve=True),
            "versions": {"recrl": recrl.__version__, "torch": torch.__version__,
                         "python": platform.python_version()}}


def evaluate_behavior(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """``recrl eval behavior-only``: fit (or load from the cache) the behavior model and report
    its fit, offline ranking and simulator fidelity; no RL training."""
    t0 = time.perf_counter()
    validate(cfg)
    set_seed(cfg.seed)
    stages = build_stages(cfg, build(cfg.trainer).device)
    t_fit = time.perf_counter()
    evaluation: Evaluation = build(cfg.eval)
    report = {"task": "behavior", **behavior_sections(cfg, stages, evaluation, stages.eval_envs(), run_dir)}
    report["timings"] = {"behavior_fit_s": t_fit - t0, "eval_s": time.perf_counter() - t_fit,
                         "total_s": time.perf_counter() - t0}
    write_report(run_dir, report)
    print_report_table(report)
    return report


def data_summary(splits: Splits) -> dict[str, Any]:
    """Sizes and preparation facts of the data, for reports."""
    inter = splits.interactions
    return {**{k: v for k, v in splits.meta.items() if isinstance(v, (int, float, str))},
            "users": inter.n_users, "items": inter.n_items, "train_rows": len(inter.train),
            "valid_rows": len(inter.valid), "test_rows": len(splits.test),
            "positive_only": inter.positive_only}
