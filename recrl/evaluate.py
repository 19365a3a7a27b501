"""Evaluation: score policies in every environment, and re-evaluate a saved run (``recrl eval``)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from recrl.behavior.offline import offline_ranking
from recrl.checkpoint import load_checkpoint, resolve_checkpoint
from recrl.config import validate
from recrl.env.simulator import RecEnv
from recrl.loop import resolve_device
from recrl.metrics.online import run_episodes
from recrl.report import print_report_table, write_report
from recrl.types import Policy, RecrlError

SELECT_ON = ("simulator", "held_out_member")


class Evaluation:
    """Final evaluation settings (``eval=default``) and the routine that applies them.

    Every policy runs ``episodes`` complete episodes, with exploration off, in every
    environment; users and their random draws depend only on ``seed``, so two evaluations of
    the same policy give the same numbers. ``select_on`` is where the training-time evaluations
    that pick ``best.pt`` run: the training ``simulator``, or with ``behavior.ensemble >= 3`` a
    ``held_out_member`` of the ensemble that the policy never trains in (the training simulator
    then samples only the other members), so the checkpoint is chosen by a model the policy
    could not exploit; never the ground truth.

    Example::

        evaluation = Evaluation(baselines=["random"], episodes=500)
        table = evaluation.run({"dqn": algo}, {"simulator": sim_env, "ground_truth": gt_env})
    """

    def __init__(self, baselines: list[str] | None = None, episodes: int = 1000,
                 batch_size: int = 1000, seed: int = 12345, offline_users: int = 2000,
                 ground_truth: str | None = None, oracle: bool = True, oracle_candidates: int = 4,
                 train_in_ground_truth: bool = False, select_on: str = "simulator") -> None:
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
        if select_on not in SELECT_ON:
            raise RecrlError(f"eval.select_on={select_on!r}: use one of {', '.join(SELECT_ON)}")
        self.select_on = select_on

    def offline(self, behavior: Any, splits: Any, history_len: int) -> dict[str, dict[str, float]]:
        """Next-item ranking of the behavior model on the test rows (up to ``offline_users``
        users, sampled with ``seed``), under the full and sampled-100 protocols."""
        if self.offline_users == 0 or not hasattr(behavior, "score_all"):
            return {}
        return offline_ranking(behavior, splits, history_len=history_len, max_users=self.offline_users,
                               seed=self.seed)

    def mean_return(self, policy: Policy, env: RecEnv, episodes: int) -> float:
        """Mean episode return over ``episodes`` evaluation episodes (training-time checks)."""
        stats = run_episodes(policy, env, episodes, self.seed, self.batch_size)
        return float(stats.returns.mean())

    def run(self, policies: dict[str, Policy], envs: dict[str, RecEnv],
            categories: Tensor | None = None) -> dict[str, dict[str, dict[str, Any]]]:
        """``{env: {policy: {metric: {mean, ci95, n}}}}`` for every pair; ``categories``
        ``[n_items]`` adds the per-session category diversity."""
        return {env_name: {name: self.summary(policy, env, categories) for name, policy in policies.items()}
                for env_name, env in envs.items()}

    def summary(self, policy: Policy, env: RecEnv, categories: Tensor | None = None) -> dict[str, Any]:
        """One policy's ``{metric: {mean, ci95, n}}`` in one environment."""
        return run_episodes(policy, env, self.episodes, self.seed, self.batch_size, categories).summary()


def restore_run(checkpoint: str | Path, device: str | None = None) -> tuple[Any, Any, dict[str, Any], Path]:
    """A run's stages and trained policy rebuilt from its checkpoint (a run folder or ``.pt``):
    ``(stages, algo, payload, path)``. ``device``: where to rebuild (``None``: the run's own,
    falling back to ``auto`` when it was a GPU)."""
    from recrl.train import build_stages, gym_stages, is_gym  # train imports this module

    path = resolve_checkpoint(checkpoint)
    payload = load_checkpoint(path)
    saved = OmegaConf.create(payload["config"])
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


def evaluate(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Rebuild a run from its checkpoint's saved config and evaluate it again.

    With the same seed and device the numbers equal the run's own final evaluation.
    """
    start = time.perf_counter()
    stages, algo, payload, path = restore_run(cfg.checkpoint, cfg.get("device"))
    report = stages.report(algo, payload["algo_name"], run_dir)
    report.update(task="eval", checkpoint=str(path), source_run=str(payload.get("run_dir", "")),
                  checkpoint_step=int(payload["step"]))
    report["timings"] = {"total_s": time.perf_counter() - start}
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
