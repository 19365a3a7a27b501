"""How faithful can a simulator learned from the logs be? The Bayes-optimal predictor's fidelity.

The fidelity check (``recrl/behavior/fidelity.py``, ``true_model``) correlates a user model's
click probabilities with the synthetic world's true ones on the slates a policy shows. No model
of the logs can score 1: a user's interest is latent, and a few clicks reveal it only in part.
This script computes the ceiling, the correlation of the *Bayes-optimal* prediction: the true
world's own click model averaged over the posterior of the user's initial interest given the
observed history (importance sampling with ``--particles`` draws from the world's prior, uniform
on the sphere; satisfaction and topic boredom, which do not depend on the interest, and the
interest's drift toward clicked items are replayed exactly for every particle). It knows every
item's true parameters, so it bounds what any model fitted on logs can reach. A second Bayes row
knows items only as the item table describes them (:func:`content_world`: each item's vector
replaced by its topic's mean vector, quality, price and clickbait kept): what a model that knows
items by their content, as the default synthetic simulator does, could reach with the world's
own form (a plug-in bound: the within-topic directions are not averaged over, only dropped).

Next to it, on the same users and slates: the run's behavior model (a single model, or the
ensemble's mean with ``behavior.ensemble=K`` after ``--``), under random slates and under a
policy that leaves the logged distribution (``quality_first``: the best non-clickbait items by
quality, the same for everyone), and with ``--policy RUN`` (repeatable) under the slates of a
trained policy (a ``recrl train`` run folder or ``.pt``, acting without exploration: the states
it leads users to, where a simulator's errors are exploited; its run must be of the same world
and behavior model as the overrides). Prints a table and writes JSON.

    python scripts/fidelity_ceiling.py --out fidelity_ceiling.json
    python scripts/fidelity_ceiling.py -- behavior.ensemble=5
    python scripts/fidelity_ceiling.py --policy outputs/train/<dqn run> --policy outputs/train/<ppo run>
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table
from torch import Tensor

from recrl.behavior.fidelity import true_model_agreement
from recrl.checkpoint import run_folder
from recrl.data.synthetic import SyntheticWorld
from recrl.env.signals import SIGNALS
from recrl.evaluate import restore_run
from recrl.logs import console_logging
from recrl.report import cpu_model, write_text_atomic
from recrl.types import Obs, RecrlError, Response

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference_policies import QualityFirst, synthetic_run, topic_means


class Posterior:
    """Particle states ``[B, P, S]`` and their normalised weights ``[B, P]`` for a batch of users."""

    def __init__(self, states: Tensor, weights: Tensor) -> None:
        self.states, self.weights = states, weights


class BayesPredictor:
    """The synthetic world's click, conversion and leave probabilities averaged over the posterior
    of each user's initial interest given the observed history (duck-types the user-model methods
    the fidelity check calls: ``encode``, ``score_all``, ``leave_prob``).

    Example::

        bayes = BayesPredictor(world, particles=1024)
        probs = bayes.score_all(bayes.encode(obs)).click_prob      # [B, n_items]
    """

    def __init__(self, world: SyntheticWorld, particles: int = 1024, seed: int = 0,
                 chunk: int = 64) -> None:
        self.world, self.chunk = world, chunk
        g = torch.Generator().manual_seed(seed)
        interest = F.normalize(torch.randn(particles, world.n_topics, generator=g), dim=1)
        rest = torch.zeros(particles, 1 + world.n_topics)
        self.prior = torch.cat([interest, rest], 1).to(world.device)

    def encode(self, obs: Obs) -> Posterior:
        """Replay the observed history (oldest first) for every particle, weighting each by the
        likelihood of the observed clicks (slates of one item: Bernoulli with the true click
        probability)."""
        w = self.world
        b, p = obs.batch_size, self.prior.shape[0]
        states = self.prior.repeat(b, 1)  # [B * P, S]
        log_w = torch.zeros(b * p, device=states.device)
        items = obs.items[:, :, :1].repeat_interleave(p, 0)  # [B * P, L, 1]
        clicks = obs.clicks[:, :, :1].repeat_interleave(p, 0)
        for t in range(items.shape[1]):
            real = items[:, t, 0] < w.n_items
            shown = items[:, t].clamp(max=w.n_items - 1)
            utility = w.click_utility(states, shown)[:, 0]
            clicked = clicks[:, t, 0]
            log_lik = clicked * F.logsigmoid(utility) + (1 - clicked) * F.logsigmoid(-utility)
            log_w = log_w + torch.where(real, log_lik, torch.zeros_like(log_lik))
            states = torch.where(real[:, None], w.update(states, shown, clicks[:, t]), states)
        weights = torch.softmax(log_w.view(b, p), 1)
        return Posterior(states.view(b, p, -1), weights)

    def score_all(self, post: Posterior) -> Response:
        """Posterior-mean click and conversion probabilities of every item ``[B, n_items]``."""
        clicks, conversions = [], []
        chunks = zip(post.states.split(self.chunk), post.weights.split(self.chunk), strict=True)
        for states, weights in chunks:
            flat = states.reshape(-1, states.shape[-1])
            click = torch.sigmoid(self.world.click_utility(flat, None)).view(*states.shape[:2], -1)
            conv = self.world.conversion_prob(flat, None).view(*states.shape[:2], -1)
            clicks.append(torch.einsum("bp,bpn->bn", weights, click))
            conversions.append(torch.einsum("bp,bpn->bn", weights, conv * click) /
                               torch.einsum("bp,bpn->bn", weights, click))
        click_prob, conv_prob = torch.cat(clicks), torch.cat(conversions)
        nan = torch.full_like(click_prob, float("nan"))
        return Response(click_prob=click_prob, click=click_prob, conversion_prob=conv_prob,
                        conversion=click_prob * conv_prob, rating=nan,
                        leave_prob=self.leave_prob(post), values=dict.fromkeys(SIGNALS, nan))

    def leave_prob(self, post: Posterior) -> Tensor:
        """Leave probability ``[B]`` (it depends on satisfaction only, known from the history)."""
        flat = post.states.reshape(-1, post.states.shape[-1])
        return (self.world.leave_prob(flat).view(post.weights.shape) * post.weights).sum(1)


def content_world(world: SyntheticWorld) -> SyntheticWorld:
    """A copy of ``world`` that knows each item only as its item table does: its vector replaced
    by the mean vector of its topic (quality, price and clickbait kept), the within-topic
    direction unknown."""
    clone = world.ground_truth(world.device)
    clone.item_emb = topic_means(world.item_emb, world.topic)
    return clone


SAME_RUN_KEYS = ("dataset", "behavior", "env")  # what a --policy run must share


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1 (else argparse's one-line usage error)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return value


def trained_policy(run: Path, cfg: DictConfig) -> tuple[str, Any]:
    """``(name, policy)`` of the ``recrl train`` run (folder or ``.pt``) ``run``, rebuilt on the
    CPU; exits with one line when it cannot be read or was trained on another world, behavior
    model or environment than ``cfg``'s (whose simulator's fidelity is being scored)."""
    try:
        stages, algo, payload, path = restore_run(run, "cpu")
    except RecrlError as err:
        sys.exit(f"error: --policy {run}: {err}")
    for key in SAME_RUN_KEYS:  # the run's config as restore_run read it (renamed keys migrated)
        saved, wanted = (OmegaConf.to_container(c[key], resolve=True) for c in (stages.cfg, cfg))
        if saved != wanted:
            sys.exit(f"error: --policy {run} was trained with another {key} than this command's "
                     f"overrides; pass that run's {key}.* overrides after --")
    return f"{payload['algo_name']} ({run_folder(path).name})", algo


def main(argv: list[str] | None = None) -> None:
    """Evaluate the Bayes predictor and the behavior model, print the table, write JSON."""
    console_logging()  # the stages' messages (behavior fit or cache hit) on the console
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--particles", type=positive_int, default=1024)
    parser.add_argument("--users", type=positive_int, default=512,
                        help="ground-truth users scored (10 steps each)")
    parser.add_argument("--out", type=Path, default=Path("fidelity_ceiling.json"))
    parser.add_argument("--policy", type=Path, action="append", default=[],
                        help="a trained run (folder or .pt) whose slates to score on; repeatable")
    parser.add_argument("overrides", nargs="*", help="recrl train overrides after --")
    args = parser.parse_args(argv)
    cfg, stages, world, env = synthetic_run(args.overrides, "fidelity ceilings")
    bayes = BayesPredictor(world, args.particles)
    by_content = BayesPredictor(content_world(world), args.particles)
    models: dict[str, Any] = {"behavior model": stages.behavior,
                              "Bayes-optimal (true items, posterior interest)": bayes,
                              "Bayes, items by content (topic-mean vectors)": by_content}
    policies = {"random slates": None, "quality_first slates": QualityFirst(world)}
    for run in args.policy:
        name, policy = trained_policy(run, cfg)
        policies[f"{name} slates"] = policy
    rows: dict[str, dict[str, dict[str, float]]] = {}
    for name, model in models.items():
        rows[name] = {where: true_model_agreement(model, env, users=args.users, policy=policy)
                      for where, policy in policies.items()}
    table = Table(title=f"Pearson correlation with the true probabilities ({args.users} users x 10 steps, "
                        "seed 0)")
    table.add_column("predictor")
    for where in policies:
        for key in ("click", "conversion", "leave"):
            table.add_column(f"{key} · {where}", justify="right")
    for name, by_policy in rows.items():
        table.add_row(name, *(f"{by_policy[w][f'{k}_prob_pearson']:.3f}" for w in policies
                              for k in ("click", "conversion", "leave")))
    Console(width=200).print(table)
    facts = {"torch": torch.__version__, "python": platform.python_version(), "overrides": args.overrides,
             "particles": args.particles, "users": args.users, "policies": [str(run) for run in args.policy],
             "cpu": cpu_model()}
    write_text_atomic(args.out, json.dumps({"facts": facts, "rows": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
