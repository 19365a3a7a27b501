"""What a policy's item prior knows of the synthetic world's item vectors (a linear probe).

A learner that personalises beyond topics (the references' ``estimated_state`` against
``estimated_topics``, ``scripts/reference_policies.py``) needs each item's direction *within* its
topic: the world's true item vector minus its topic's mean. This script asks how much of that a
policy's item prior (``algo.item_init``: the item table's content, ``side``, or the fitted
behavior model's item vectors, ``behavior``) carries: a least-squares map from the prior (plus
topic dummies) to the within-topic direction is fitted on 80% of the items and scored by R² on
the other 20% (held out; 1 = the prior knows the direction, 0 = nothing beyond the topic; below
0 = noise fitted). The whole vector's R² is shown too (the topic part, which the dummies give).

``--run DIR`` probes a trained policy's own item vectors too (the item table its scores use:
id embeddings plus the mapped prior), to see whether the learner found the directions itself
(the run must be on the same world: pass the same dataset overrides).

    python scripts/item_prior_probe.py
    python scripts/item_prior_probe.py --priors behavior -- behavior.item_ids=true
    python scripts/item_prior_probe.py --run outputs/train/<timestamp> --checkpoint trained_in_ground_truth
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table
from torch import Tensor

from recrl import api
from recrl.algos.nets import behavior_item_prior
from recrl.logs import console_logging
from recrl.report import write_text_atomic
from recrl.types import RecrlError

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference_policies import synthetic_run, topic_means


def held_out_r2(features: Tensor, target: Tensor, seed: int = 0, train_share: float = 0.8) -> float:
    """R² on held-out rows of the least-squares map (with an intercept) from ``features`` ``[N, F]``
    to ``target`` ``[N, D]``, fitted on a random ``train_share`` of the rows."""
    n = features.shape[0]
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    train, test = order[: int(n * train_share)], order[int(n * train_share):]
    design = torch.cat([features, features.new_ones(n, 1)], 1).double()
    target = target.double()
    weights = torch.linalg.lstsq(design[train], target[train], driver="gelsd").solution
    error = ((target[test] - design[test] @ weights) ** 2).sum()
    spread = ((target[test] - target[test].mean(0)) ** 2).sum()
    return float(1.0 - error / spread)


def within_topic(vectors: Tensor, topic: Tensor) -> Tensor:
    """``vectors`` ``[N, D]`` minus the mean vector of each row's topic."""
    return vectors - topic_means(vectors, topic)


def probe(prior: Tensor, vectors: Tensor, topic: Tensor) -> dict[str, float]:
    """Held-out R² of the within-topic direction and of the whole vector from ``prior`` plus topic
    dummies (so that the probe credits the prior only with what the topic does not say)."""
    features = torch.cat([prior.float(), F.one_hot(topic).float()], 1)
    return {"within_topic_r2": held_out_r2(features, within_topic(vectors, topic)),
            "whole_vector_r2": held_out_r2(features, vectors)}


def policy_item_table(algo: object) -> Tensor:
    """The item vectors ``[n_items, D]`` a trained algorithm scores with (its ``q`` or ``policy``
    network's ``item_table()``); exits with a message for algorithms without one."""
    for name in ("q", "policy"):
        net = getattr(algo, name, None)
        if hasattr(net, "item_table"):
            with torch.no_grad():
                return net.item_table()[:algo.ctx.n_items].detach().cpu()
    sys.exit(f"{type(algo).__name__} has no item table to probe (DQN, C51, PPO, REINFORCE, A2C, BC, CQL do)")


def main() -> None:
    """Probe each requested prior, print the table and write the JSON."""
    console_logging()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--priors", nargs="+", default=["side", "behavior"],
                        help="algo.item_init sources to probe (side, behavior, behavior+side)")
    parser.add_argument("--run", type=Path, action="append", default=[],
                        help="a trained run folder whose policy's item vectors to probe (repeatable)")
    parser.add_argument("--checkpoint", default="last",
                        help="which of each run's checkpoints: last, best or trained_in_ground_truth "
                             "(the copy trained in the ground truth, eval.train_in_ground_truth=true)")
    parser.add_argument("--out", type=Path, default=Path("item_prior_probe.json"))
    parser.add_argument("overrides", nargs="*", help="recrl train overrides after --")
    args = parser.parse_args()
    _, stages, world, _ = synthetic_run(args.overrides, "item prior probes")
    rows = {}
    for source in args.priors:
        prior = behavior_item_prior(stages.ctx, source)
        if prior is None:
            sys.exit(f"algo.item_init={source} gives no prior on this run")
        rows[source] = {"dims": prior.shape[1], **probe(prior, world.item_emb, world.topic)}
    for run_dir in args.run:
        try:
            algo = api.load(run_dir, device="cpu", checkpoint=args.checkpoint).policy.algo
        except RecrlError as error:
            sys.exit(f"{run_dir}: {error}")
        if algo.ctx.n_items != world.n_items:
            sys.exit(f"{run_dir} has {algo.ctx.n_items} items, this world {world.n_items}: pass the run's "
                     "dataset overrides after --")
        vectors = policy_item_table(algo)
        name = f"{run_dir.name} ({type(algo).__name__}, {args.checkpoint})"
        rows[name] = {"dims": vectors.shape[1], **probe(vectors, world.item_emb, world.topic)}
    rows["true item vectors (check)"] = {"dims": world.item_emb.shape[1],
                                         **probe(world.item_emb, world.item_emb, world.topic)}
    table = Table(title=f"linear probe, {world.n_items} items (80% fit, 20% held out)")
    for column in ("prior", "dims", "R² within topic", "R² whole vector"):
        table.add_column(column, justify="left" if column == "prior" else "right")
    for name, r in rows.items():
        table.add_row(name, str(r["dims"]), f"{r['within_topic_r2']:.3f}", f"{r['whole_vector_r2']:.3f}")
    Console().print(table)
    facts = {"torch": torch.__version__, "python": platform.python_version(), "overrides": args.overrides}
    write_text_atomic(args.out, json.dumps({"facts": facts, "rows": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
