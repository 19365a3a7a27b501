"""Off-policy estimates of every policy in a report, from the held-out logs (``ope=default``).

The logged sessions are the test split's (never a row any learner trained on), each cut to the
run's episode length (:class:`~recrl.ope.sessions.LoggedSessions`). For each policy the
per-step estimators give the expected reward of one recommendation at the logged users' states
(the bandit view) and the per-session estimators the expected return of a session (the
sequential view, comparable with the ``return`` of the simulator and the ground truth). The
estimate named by ``column`` becomes the policy's ``return`` in the report's ``ope`` column.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from dataclasses import asdict
from typing import Any

import numpy as np

from recrl.env.simulator import RecEnv
from recrl.ope import estimators as est
from recrl.ope.propensity import MODES, LoggingPolicyModel, calibration, fill_propensities, fit_logging_policy
from recrl.ope.sessions import LoggedSessions
from recrl.ope.target import TargetTerms, target_terms
from recrl.types import Interactions, Policy, RecrlError, Reward

logger = logging.getLogger(__name__)

PER_STEP = ("dm", "ips", "snips", "clipped_ips", "dr", "switch_dr")
"""Bandit-view estimators: expected reward per logged step."""
PER_SESSION = ("model", "pdis", "wpdis", "wdr", "seq_dr")
"""Sequential estimators: expected (discounted) return per session; ``model`` is the sequential
direct method (the behavior model's long-term value of each session's first state)."""
NEEDS_PROPENSITY = frozenset(PER_STEP + PER_SESSION) - {"dm", "model"}
NEEDS_MODEL = frozenset({"model", "wdr", "seq_dr"})  # read the model's long-term values
SESSION_NAMES = {"sequential_dr": "seq_dr", "weighted_dr": "wdr"}  # estimators' names -> config names


class OffPolicyEvaluation:
    """Off-policy estimates of policies from the test split's logged sessions.

    Args:
        enabled: ``false`` leaves the section and the ``ope`` column out of reports.
        estimators: which to compute (default: all of :data:`PER_STEP` and :data:`PER_SESSION`).
        column: the per-session estimator reported as the policy's ``return`` in the ``ope``
            column (and used by ``trainer.select_by=ope``).
        gamma: discount of the per-session estimators (1.0: the undiscounted return the other
            columns report).
        epsilon: smoothing of the target's probabilities, ``(1 - epsilon) pi + epsilon / n``; 0
            evaluates a deterministic policy exactly (rows it would not serve get weight 0).
        max_weight: the clip of ``clipped_ips``; tau: the switch threshold of ``switch_dr``.
        n_boot, seed: bootstrap resamples and seed of every CI.
        rollouts: simulated continuations per logged row behind the model's long-term values
            (``model``, ``seq_dr``).
        max_sessions: at most this many test sessions (drawn with ``seed``) keep the cost bounded.
        propensity: ``auto`` (the logged propensity where the data has one, else a logging-policy
            model's estimate, :mod:`recrl.ope.propensity`), ``logged`` (only logged ones; the
            estimators that need them are skipped where rows lack them) or ``estimated`` (the
            model's for every row, e.g. to see what estimation costs where the truth is logged).
        propensity_rows: the logging-policy model is fitted on the training rows of at most this
            many rows' worth of users (drawn with ``seed``): its full softmax over the catalogue
            costs rows x items per epoch.
        split: the logs estimated from: ``test`` (default) or ``valid`` (never trained on by a
            learner either; e.g. Coat's self-selected rows, whose test split is the randomized
            log). ``trainer.select_by=ope`` always reads ``valid``: keep reports on ``test`` then.

    Example::

        ope = OffPolicyEvaluation(estimators=["ips", "wpdis"], column="wpdis")
        section, column = ope.run({"dqn": algo}, test_log, behavior, reward, env, n_items=500,
                                  history_len=10, horizon=20)
    """

    def __init__(self, enabled: bool = True, estimators: list[str] | None = None, column: str = "model",
                 gamma: float = 1.0, epsilon: float = 0.0, max_weight: float = 10.0, tau: float = 10.0,
                 n_boot: int = est.N_BOOT, seed: int = est.SEED, rollouts: int = 4,
                 max_sessions: int = 2000, propensity: str = "auto", propensity_rows: int = 50_000,
                 split: str = "test") -> None:
        known = PER_STEP + PER_SESSION
        self.estimators = list(estimators) if estimators is not None else list(known)
        unknown = [name for name in self.estimators if name not in known]
        if unknown:
            raise RecrlError(f"ope.estimators: unknown {', '.join(unknown)}; use any of {', '.join(known)}")
        if column not in PER_SESSION:
            raise RecrlError(f"ope.column={column!r}: use a per-session estimator ({', '.join(PER_SESSION)})")
        if column not in self.estimators:
            self.estimators.append(column)
        if not 0.0 <= epsilon <= 1.0:
            raise RecrlError(f"ope.epsilon must lie in [0, 1], got {epsilon}")
        if n_boot < 0 or rollouts < 1 or max_sessions < 1:
            raise RecrlError("ope.n_boot must be >= 0, ope.rollouts and ope.max_sessions >= 1")
        self.enabled, self.column, self.gamma, self.epsilon = enabled, column, gamma, epsilon
        self.max_weight, self.tau, self.n_boot, self.seed = max_weight, tau, n_boot, seed
        self.rollouts, self.max_sessions = rollouts, max_sessions
        if propensity not in MODES:
            raise RecrlError(f"ope.propensity={propensity!r}: use one of {', '.join(MODES)}")
        self.propensity = propensity
        if propensity_rows < 1:
            raise RecrlError(f"ope.propensity_rows must be >= 1, got {propensity_rows}")
        self.propensity_rows = propensity_rows
        if split not in ("test", "valid"):
            raise RecrlError(f"ope.split={split!r}: use test or valid")
        self.split = split
        self._fitted: tuple[Interactions, LoggingPolicyModel] | None = None  # the last logs' model

    @property
    def needs_model(self) -> bool:
        """Whether an estimator reads the model's long-term values (``model``, ``wdr``, ``seq_dr``)."""
        return bool(NEEDS_MODEL & set(self.estimators))

    def sessions(self, log: Any, n_items: int, history_len: int, horizon: int, reward: Reward,
                 device: Any, source: str = "the test split") -> LoggedSessions:
        """The logged sessions the estimates run on."""
        return LoggedSessions.from_log(log, n_items, history_len, horizon, reward, device,
                                       max_sessions=self.max_sessions, seed=self.seed, source=source)

    def estimate(self, policy: Policy, sessions: LoggedSessions, behavior: Any, reward: Reward,
                 env: RecEnv | None) -> dict[str, est.Estimate]:
        """Every configured estimate of ``policy`` on ``sessions`` (propensities must be usable)."""
        terms = target_terms(policy, sessions, behavior, reward, env if self.needs_model else None,
                             self.gamma, self.epsilon, self.rollouts, self.seed)
        return self._estimates(sessions, terms)

    def _estimates(self, sessions: LoggedSessions, terms: TargetTerms) -> dict[str, est.Estimate]:
        """The configured estimates: the per-step ones and the per-session ones each through one
        shared bootstrap (:func:`~recrl.ope.estimators.estimate_all`, ``estimate_all_sessions``)."""
        steps = sessions.steps
        r = steps.transitions.reward.double().cpu().numpy()
        mu = steps.propensity.double().cpu().numpy()
        pi = terms.p_target
        boot = {"n_boot": self.n_boot, "seed": self.seed}
        wanted = set(self.estimators)
        found: dict[str, est.Estimate] = {}
        if wanted & NEEDS_PROPENSITY & set(PER_STEP):
            found |= est.estimate_all(r, mu, pi, terms.q_logged, terms.v_target, self.max_weight, self.tau,
                                      **boot)
        elif "dm" in wanted:
            found["dm"] = est.dm(terms.v_target, **boot)
        if "model" in wanted:
            found["model"] = est.dm(terms.v_model[sessions.first.cpu().numpy()], **boot)
        if wanted & NEEDS_PROPENSITY & set(PER_SESSION):
            grid = sessions.grid
            model = (grid(terms.q_model), grid(terms.v_model)) if terms.q_model is not None else (None, None)
            every = est.estimate_all_sessions(grid(r), grid(mu, 1.0), grid(pi), sessions.mask, *model,
                                              gamma=self.gamma, **boot)
            found |= {SESSION_NAMES.get(name, name): value for name, value in every.items()}
        return {name: found[name] for name in self.estimators}

    def logging_model(self, interactions: Interactions, history_len: int, device: Any) -> LoggingPolicyModel:
        """The logging-policy model fitted on ``interactions``' training rows (once per logs)."""
        if self._fitted is not None and self._fitted[0] is interactions:
            return self._fitted[1]
        sample = _users_up_to(interactions, self.propensity_rows, self.seed)
        logger.info("fitting a logging-policy model for the missing propensities on %d training rows",
                    len(sample.train))
        model = fit_logging_policy(sample, history_len, device, seed=self.seed)
        self._fitted = (interactions, model)
        return model

    def with_propensities(self, sessions: LoggedSessions, interactions: Interactions | None,
                          history_len: int, device: Any) -> tuple[LoggedSessions, dict[str, Any]]:
        """``sessions`` with propensities per ``propensity`` and what the report says about them
        (rows logged, estimated and missing; the model's fit and calibration where one ran)."""
        logged = sessions.steps.propensity.cpu().numpy()
        missing = int(np.isnan(logged).sum())
        if self.propensity == "logged" or (self.propensity == "auto" and not missing) or interactions is None:
            return sessions, {"logged": len(sessions) - missing, "estimated": 0, "missing": missing}
        model = self.logging_model(interactions, history_len, device)
        filled = fill_propensities(sessions.log, model, mode=self.propensity)
        info = {**filled.counts, "missing": 0, "model": dict(model.fit_info),
                "calibration": calibration(model, sessions.log)}
        return sessions.with_propensity(filled.propensity), info

    def run(self, policies: dict[str, Policy], log: Any, behavior: Any, reward: Reward, env: RecEnv | None,
            n_items: int, history_len: int, horizon: int, device: Any, source: str = "the test split",
            interactions: Interactions | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
        """``(section, column)``: the report's ``off_policy`` section (every estimate of every
        policy, the logs' facts) and its ``ope`` column (``{policy: {"return": stat}}``).
        ``interactions``: the training logs a logging-policy model is fitted on where
        propensities are missing."""
        sessions = self.sessions(log, n_items, history_len, horizon, reward, device, source)
        sessions, propensity = self.with_propensities(sessions, interactions, history_len, device)
        missing = propensity["missing"]
        section: dict[str, Any] = {
            "source": source, "sessions": sessions.n_sessions, "rows": len(sessions),
            "horizon": horizon, "gamma": self.gamma, "epsilon": self.epsilon, "column": self.column,
            "propensity": propensity, "policies": {}}
        skipped: dict[str, str] = {}
        if missing:
            skipped.update({name: f"{missing} of {len(sessions)} rows of {source} have no logged "
                            "propensity (ope.propensity=logged)" for name in NEEDS_PROPENSITY})
        if env is None:
            skipped.update({name: "no environment over the behavior model to continue sessions in"
                            for name in NEEDS_MODEL})
        estimators = [name for name in self.estimators if name not in skipped]
        section["skipped"] = {name: skipped[name] for name in self.estimators if name in skipped}
        if section["skipped"]:
            logger.warning("off-policy evaluation on %s: %s skipped (%s); %s run", source,
                           ", ".join(section["skipped"]), "; ".join(sorted(set(section["skipped"].values()))),
                           ", ".join(estimators) or "nothing")
        column: dict[str, Any] = {}
        runner = _with_estimators(self, estimators)
        for name, policy in policies.items():
            try:
                estimates = runner.estimate(policy, sessions, behavior, reward, env)
            except RecrlError as err:
                section["policies"][name] = {"error": str(err)}
                continue
            section["policies"][name] = {k: asdict(v) for k, v in estimates.items()}
            if self.column in estimates:
                column[name] = {"return": _stat(estimates[self.column])}
        return section, column


def _users_up_to(interactions: Interactions, max_rows: int, seed: int) -> Interactions:
    """``interactions`` with the training rows of randomly drawn users (``seed``) adding up to at
    most ``max_rows`` (all of them when they fit); validation rows of those users and of users
    with no training rows (a split by user)."""
    train = interactions.train
    if len(train) <= max_rows:
        return interactions
    sizes = train.groupby("user", sort=False).size()
    order = np.random.default_rng(seed).permutation(len(sizes))
    kept = sizes.index[order][np.cumsum(sizes.to_numpy()[order]) <= max_rows]
    valid = interactions.valid
    return dataclasses.replace(interactions, train=train[train["user"].isin(kept)].reset_index(drop=True),
                               valid=valid[valid["user"].isin(kept) | ~valid["user"].isin(sizes.index)]
                               .reset_index(drop=True))


def _with_estimators(ope: OffPolicyEvaluation, estimators: list[str]) -> OffPolicyEvaluation:
    """A copy of ``ope`` running only ``estimators``."""
    only = copy.copy(ope)
    only.estimators = list(estimators)
    return only


def _stat(estimate: est.Estimate) -> dict[str, float]:
    """An estimate as a report statistic: ``mean``, ``ci95`` (half the CI's width), the CI's
    ends and the ESS."""
    return {"mean": estimate.value, "ci95": (estimate.ci95_high - estimate.ci95_low) / 2.0,
            "low": estimate.ci95_low, "high": estimate.ci95_high, "ess": estimate.ess, "n": estimate.n}


def off_policy(ope: OffPolicyEvaluation, stages: Any, policies: dict[str, Policy],
               split: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ``off_policy`` report section and ``ope`` column of ``policies`` on a run's logs
    (``split``: ``test`` or ``valid``; ``None``: ``ope.split``); a section that says why when the
    run cannot have one."""
    ctx = stages.ctx
    split = split or ope.split
    log = stages.splits.test if split == "test" else stages.splits.interactions.valid
    if ctx.slate_size != 1:
        return {"skipped": f"env.slate_size={ctx.slate_size}: the logs hold single items, and per-step "
                           "and per-session estimators here weigh single logged items"}, {}
    if log.empty:
        return {"skipped": f"the {split} split has no logged rows"}, {}
    behavior = stages.behavior
    env = stages.model_env() if ope.needs_model and hasattr(behavior, "encode") else None
    if ope.needs_model and env is None:
        return {"skipped": f"{type(behavior).__name__} cannot encode a logged history into a state"}, {}
    return ope.run(policies, log, behavior, stages.reward, env, ctx.n_items, ctx.history_len, ctx.horizon,
                   stages.device, source=f"the {split} split", interactions=stages.splits.interactions)


class OPESelection:
    """``trainer.select_by=ope``: the ``ope.column`` estimate of a policy on the validation
    split's logged sessions (built once), what picks ``best.pt``; NaN (no support) never wins."""

    def __init__(self, ope: OffPolicyEvaluation, stages: Any) -> None:
        ctx, valid = stages.ctx, stages.splits.interactions.valid
        if ctx.slate_size != 1:
            raise RecrlError("trainer.select_by=ope needs env.slate_size=1 (the logs hold single items)")
        if valid.empty:
            raise RecrlError("trainer.select_by=ope needs validation rows; the validation split is empty")
        self.ope = _with_estimators(ope, [ope.column])
        self.stages = stages
        self.env = stages.model_env() if self.ope.needs_model else None
        sessions = ope.sessions(valid, ctx.n_items, ctx.history_len, ctx.horizon, stages.reward,
                                stages.device, source="the validation split")
        self.sessions, propensity = ope.with_propensities(sessions, stages.splits.interactions,
                                                          ctx.history_len, stages.device)
        if propensity["missing"] and ope.column in NEEDS_PROPENSITY:
            raise RecrlError(f"trainer.select_by=ope with ope.column={ope.column} needs propensities on "
                             f"{propensity['missing']} validation rows that have none; use "
                             "ope.propensity=auto or ope.column=model")

    def __call__(self, policy: Policy) -> float:
        """The estimate (``-inf`` where it is undefined)."""
        estimate = self.ope.estimate(policy, self.sessions, self.stages.behavior, self.stages.reward,
                                     self.env)[self.ope.column]
        return estimate.value if np.isfinite(estimate.value) else float("-inf")
