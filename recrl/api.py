"""The Python API: train, reload and serve recrl policies from a notebook or a service.

Example::

    from recrl import api

    run = api.train(["algo=dqn", "trainer.steps=2000"])     # the same run as `recrl train ...`
    run.report["evaluation"]["ground_truth"]["dqn"]["return"]
    same = api.load(run.run_dir)                             # from its checkpoint, anywhere
    same.policy.recommend([[12, 7, 3], [41]], k=5)           # raw item ids in, raw item ids out

``train`` composes the configuration exactly as the command line does (the same ``conf/``,
the same override syntax and one-line errors) and writes the same run folder.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from recrl.checkpoint import run_folder
from recrl.config import validate
from recrl.fileio import write_text_atomic
from recrl.logs import console_logging
from recrl.report import read_report
from recrl.types import Obs, RecrlError, Scorer

__all__ = ["Recommender", "Run", "load", "train"]


class Recommender:
    """A trained policy served on raw item ids (the dataset's own ids; the id maps of the
    prepared data are applied both ways).

    ``histories`` are one sequence per user of the steps it saw, oldest first: each step a raw
    item id (a slate of one) or a sequence of raw ids (a slate); ``clicks`` (same shape, 0/1)
    says which were clicked, and by default every item was. Only the last ``history_len`` steps
    are used, as in training.

    Example::

        rec = run.policy
        rec.recommend([["tt0114709", "tt0113189"]], k=10)    # [[10 raw ids]]
        rec.recommend(histories, k=3, clicks=[[1, 0], [0]])  # shown-but-not-clicked steps too
    """

    def __init__(self, algo: Any, n_items: int, history_len: int, slate_size: int, horizon: int,
                 item_ids: np.ndarray | None = None, device: torch.device | str = "cpu") -> None:
        self.algo, self.n_items, self.history_len = algo, n_items, history_len
        self.slate_size, self.horizon, self.device = slate_size, horizon, torch.device(device)
        self.item_ids = item_ids
        raw = range(n_items) if item_ids is None else item_ids.tolist()
        self.index = {_key(r): i for i, r in enumerate(raw)}

    def observe(self, histories: Sequence[Sequence[Any]],
                clicks: Sequence[Sequence[Any]] | None = None, unknown: str = "error") -> Obs:
        """The observation ``[B, history_len, slate_size]`` of raw-id ``histories`` (padding where
        a user has fewer steps). ``unknown``: ``error`` (default) or ``skip`` items the
        catalogue does not know."""
        if unknown not in ("error", "skip"):
            raise RecrlError(f"unknown={unknown!r}: use 'error' or 'skip'")
        b, length, k = len(histories), self.history_len, self.slate_size
        items = torch.full((b, length, k), self.n_items, dtype=torch.long)
        clicked = torch.zeros(b, length, k)
        steps = torch.zeros(b, dtype=torch.long)
        for row, history in enumerate(histories):
            user_clicks = None if clicks is None else clicks[row]
            if user_clicks is not None and len(user_clicks) != len(history):
                raise RecrlError(f"clicks[{row}] has {len(user_clicks)} steps but histories[{row}] "
                                 f"has {len(history)}")
            steps[row] = min(len(history), self.horizon - 1)
            recent = list(history)[-length:]
            recent_clicks = None if user_clicks is None else list(user_clicks)[-length:]
            offset = length - len(recent)
            for t, step in enumerate(recent):
                slate = self._dense_slate(step, unknown)
                step_clicks = _as_slots(1 if recent_clicks is None else recent_clicks[t], len(slate))
                for j, (item, c) in enumerate(zip(slate, step_clicks, strict=True)):
                    known = item != self.n_items  # a skipped unknown item is padding, never clicked
                    items[row, offset + t, j], clicked[row, offset + t, j] = item, float(c) * known
        return Obs(items=items, clicks=clicked, step=steps).to(self.device)

    @torch.no_grad()
    def recommend(self, histories: Sequence[Sequence[Any]], k: int | None = None,
                  clicks: Sequence[Sequence[Any]] | None = None, unknown: str = "error") -> list[list[Any]]:
        """The ``k`` items (raw ids, best first) the policy serves each user next, without
        exploration. ``k`` defaults to the run's slate size; another length needs a policy that
        ranks the catalogue (:class:`~recrl.types.Scorer`: DQN, C51, PPO, REINFORCE, A2C, the
        offline learners, the bandits and baselines). Items the policy never serves (e.g. those
        already in the history, with ``algo.skip_shown``) are left out, so a list can be shorter
        than ``k``."""
        k = self.slate_size if k is None else int(k)
        if k < 1:
            raise RecrlError(f"k={k}: ask for at least one item")
        obs = self.observe(histories, clicks, unknown)
        if isinstance(self.algo, Scorer):
            scores = self.algo.scores(obs)
            top = scores.topk(min(k, self.n_items), dim=1)
            ranked = [[int(i) for i, s in zip(idx, val, strict=True) if s > float("-inf")]
                      for idx, val in zip(top.indices.tolist(), top.values.tolist(), strict=True)]
        elif k == self.slate_size:
            ranked = self.algo.act(obs, explore=False).tolist()
        else:
            raise RecrlError(f"{type(self.algo).__name__} serves slates of {self.slate_size} and does not "
                             f"rank the catalogue; ask for k={self.slate_size}")
        return [[self._raw(i) for i in row] for row in ranked]

    def _dense_slate(self, step: Any, unknown: str) -> list[int]:
        raws = list(step) if isinstance(step, (list, tuple, np.ndarray)) else [step]
        if len(raws) > self.slate_size:
            raise RecrlError(f"a history step holds {len(raws)} items; this policy's slates hold "
                             f"{self.slate_size}")
        dense = []
        for raw in raws:
            index = self.index.get(_key(raw))
            if index is None and unknown == "error":
                raise RecrlError(f"item {raw!r} is not in this run's catalogue ({self.n_items} items); "
                                 "pass unknown='skip' to ignore unknown items")
            dense.append(self.n_items if index is None else index)
        return dense

    def _raw(self, index: int) -> Any:
        if self.item_ids is None:
            return index
        value = self.item_ids[index]
        return value.item() if isinstance(value, np.generic) else value


@dataclass
class Run:
    """A trained run: its folder, resolved config, final report, the trained policy (served on
    raw ids: :class:`Recommender`; the algorithm itself is ``policy.algo``) and the fitted
    behavior model (``None`` for gymnasium runs)."""

    run_dir: Path
    config: DictConfig
    report: dict[str, Any]
    policy: Recommender
    behavior: Any


def train(overrides: Sequence[str] | DictConfig | None = None, run_dir: str | Path | None = None,
          algo_name: str | None = None) -> Run:
    """Run ``recrl train`` in this process and return the :class:`Run`.

    ``overrides``: command-line style ``key=value`` strings (checked like the CLI's: an unknown
    key or option raises :class:`~recrl.types.RecrlError` with one line), or a composed config.
    ``run_dir``: where the run folder goes (default ``outputs/train/<timestamp>``, like the CLI).
    ``algo_name``: the name of the algorithm's rows in the report (default: the ``algo`` option
    chosen, or the class name for a config).
    """
    from recrl.cli import compose_with_choices
    from recrl.train import train as run_training

    console_logging()
    if isinstance(overrides, DictConfig):
        cfg = overrides
        validate(cfg)  # before the run folder exists (composed configs are checked as they compose)
        name = algo_name or str(cfg.algo._target_).rsplit(".", 1)[-1].lower()
    else:
        cfg, choices = compose_with_choices("train", list(overrides or []))
        name = algo_name or choices["algo"]
    folder = Path(run_dir) if run_dir is not None else Path("outputs/train") / dt.datetime.now().strftime(
        "%Y-%m-%d_%H-%M-%S")
    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomic(folder / ".hydra" / "config.yaml", OmegaConf.to_yaml(cfg))
    trained = run_training(cfg, folder, algo_name=name)
    return _run(folder, cfg, read_report(folder), trained.stages, trained.algo)


def load(run_dir: str | Path, device: str | None = None, checkpoint: str = "last") -> Run:
    """The :class:`Run` of a finished run folder, rebuilt from its checkpoint (``last``: the
    policy the run ended with and reported, or ``best``: the one its training-time evaluations
    picked; a ``.pt`` path also works) on ``device`` (default: the run's own, or ``auto`` when
    that was a GPU). The behavior model is the checkpoint's, not refitted."""
    from recrl.evaluate import restore_run

    folder = Path(run_dir)
    where = folder / "checkpoints" / f"{checkpoint}.pt" if folder.is_dir() else folder
    if folder.is_dir() and not where.is_file():
        raise RecrlError(f"{folder} has no checkpoints/{checkpoint}.pt (use checkpoint='last' or 'best', "
                         "or pass a .pt file)")
    stages, algo, payload, path = restore_run(where, device)
    home = run_folder(path)
    return _run(home, OmegaConf.create(payload["config"]), read_report(home), stages, algo)


def _run(run_dir: Path, cfg: DictConfig, report: dict[str, Any], stages: Any, algo: Any) -> Run:
    ctx = stages.ctx
    splits = getattr(stages, "splits", None)
    item_ids = None if splits is None else splits.item_ids
    policy = Recommender(algo, ctx.n_items, ctx.history_len, ctx.slate_size, ctx.horizon, item_ids,
                         ctx.device)
    return Run(run_dir=run_dir, config=cfg, report=report, policy=policy,
               behavior=getattr(stages, "behavior", None))


def _key(raw: Any) -> Any:
    """A dictionary key for a raw id: numpy scalars as Python values, so 7 and np.int64(7) match."""
    return raw.item() if isinstance(raw, np.generic) else raw


def _as_slots(value: Any, n: int) -> list[Any]:
    """Per-slot click flags of a step: a scalar applies to every slot of the slate."""
    if isinstance(value, (list, tuple, np.ndarray)):
        if len(value) != n:
            raise RecrlError(f"a step's clicks hold {len(value)} flags for a slate of {n} items")
        return list(value)
    return [value] * n
