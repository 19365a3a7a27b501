"""Benchmark the OPE estimators: seconds for a million logged rows, each with its bootstrap CI.

Generates the inputs (no files needed): ``--rows`` logged rows for DM, IPS, SNIPS, clipped IPS,
DR and switch-DR; the same number of steps as ``--sessions`` sessions of ``--steps`` steps for
PDIS, WPDIS, sequential DR and weighted DR; ``--slates`` slates of ``--slots`` slots (product
logger) for PI and PI-SN. Times every estimator's own function, then the shared-bootstrap paths
(``estimate_all``, ``estimate_all_sessions``, ``pi_weights`` + ``slate_estimates``), whose sum is
the figure held against the ``--budget`` (default 10 s). Best of ``--repeats`` runs; input
generation is not timed.

    OMP_NUM_THREADS=1 python scripts/bench_ope.py --out bench_ope.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from recrl.fileio import write_text_atomic
from recrl.ope import estimators as ope
from recrl.ope import slate
from recrl.ope.core import N_BOOT
from recrl.report import cpu_model


def row_inputs(rows: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Per-step rows: Bernoulli rewards, propensities, target probabilities and model terms."""
    return {"reward": (rng.random(rows) < 0.3).astype(np.float64), "p_log": rng.uniform(0.05, 1.0, rows),
            "p_target": rng.random(rows), "q_logged": rng.random(rows), "v_target": rng.random(rows)}


def session_inputs(sessions: int, steps: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """``[sessions, steps]`` padded sessions of random length in ``[1, steps]``."""
    shape = (sessions, steps)
    mask = np.arange(steps)[None, :] < rng.integers(1, steps + 1, sessions)[:, None]
    return {"reward": rng.random(shape), "p_log": rng.uniform(0.5, 1.0, shape),
            "p_target": rng.uniform(0.5, 1.0, shape), "q_logged": rng.random(shape),
            "v_target": rng.random(shape), "mask": mask}


def slate_inputs(slates: int, slots: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Slate rewards (clicks summed over slots) and per-slot marginals of a product logger."""
    shape = (slates, slots)
    return {"reward": (rng.random(shape) < 0.2).sum(axis=1).astype(np.float64),
            "p_log": rng.uniform(0.05, 1.0, shape), "p_target": rng.random(shape)}


def timed(fn: Callable[[], object], repeats: int) -> float:
    """Best wall-clock seconds of ``repeats`` calls."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def single_calls(rows: dict, sess: dict, slates: dict) -> list[tuple[str, int, Callable[[], object]]]:
    """Each estimator's own function: (name, units, call)."""
    r, mu, pi, q, v = (rows[k] for k in ("reward", "p_log", "p_target", "q_logged", "v_target"))
    s_args = (sess["reward"], sess["p_log"], sess["p_target"])
    n, steps = len(r), int(sess["mask"].size)
    return [("dm", n, lambda: ope.dm(v)), ("ips", n, lambda: ope.ips(r, mu, pi)),
            ("snips", n, lambda: ope.snips(r, mu, pi)),
            ("clipped_ips", n, lambda: ope.clipped_ips(r, mu, pi)),
            ("dr", n, lambda: ope.dr(r, mu, pi, q, v)),
            ("switch_dr", n, lambda: ope.switch_dr(r, mu, pi, q, v)),
            ("pdis", steps, lambda: ope.pdis(*s_args, sess["mask"])),
            ("wpdis", steps, lambda: ope.wpdis(*s_args, sess["mask"])),
            ("sequential_dr", steps, lambda: ope.sequential_dr(*s_args, sess["q_logged"], sess["v_target"],
                                                               sess["mask"])),
            ("weighted_dr", steps, lambda: ope.weighted_dr(*s_args, sess["q_logged"], sess["v_target"],
                                                           sess["mask"])),
            ("pseudo_inverse", len(slates["reward"]),
             lambda: slate.pseudo_inverse(slates["reward"], slates["p_log"], slates["p_target"])),
            ("pseudo_inverse_sn", len(slates["reward"]),
             lambda: slate.pseudo_inverse_sn(slates["reward"], slates["p_log"], slates["p_target"]))]


def shared_calls(rows: dict, sess: dict, slates: dict) -> list[tuple[str, int, Callable[[], object]]]:
    """The shared-bootstrap paths that together cover every estimator: (name, units, call)."""
    def all_slates() -> object:
        w = slate.pi_weights(slates["p_log"], slates["p_target"])
        return slate.slate_estimates(slates["reward"], w)

    return [("estimate_all (6 per-step)", len(rows["reward"]), lambda: ope.estimate_all(**rows)),
            ("estimate_all_sessions (4)", int(sess["mask"].size), lambda: ope.estimate_all_sessions(**sess)),
            ("PI + PI-SN (slate_estimates)", len(slates["reward"]), all_slates)]


def machine() -> dict:
    """CPU model, core count and versions."""
    cpu = cpu_model()
    return {"cpu": cpu, "cpus": os.cpu_count(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "numpy": np.__version__, "python": sys.version.split()[0]}


def print_table(results: list[dict], budget: float, title: str) -> None:
    """The results as a rich table (estimator, rows, seconds, share of the budget)."""
    table = Table(title=title)
    for col in ("estimator", "rows", "seconds", f"share of {budget:g} s"):
        table.add_column(col, justify="right")
    for res in results:
        table.add_row(res["estimator"], f"{res['rows']:,}", f"{res['seconds']:.2f}",
                      f"{100 * res['seconds'] / budget:.0f}%")
    Console().print(table)


def main() -> None:
    """Generate the inputs, time the estimators, print the tables, write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--sessions", type=int, default=50_000)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--slates", type=int, default=1_000_000)
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--budget", type=float, default=10.0, help="seconds for every estimator together")
    parser.add_argument("--out", type=Path, default=Path("bench_ope.json"))
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    rows = row_inputs(args.rows, rng)
    sess = session_inputs(args.sessions, args.steps, rng)
    slates = slate_inputs(args.slates, args.slots, rng)
    single = [{"estimator": name, "rows": units, "seconds": timed(call, args.repeats)}
              for name, units, call in single_calls(rows, sess, slates)]
    shared = [{"estimator": name, "rows": units, "seconds": timed(call, args.repeats)}
              for name, units, call in shared_calls(rows, sess, slates)]
    total = sum(res["seconds"] for res in shared)
    shared.append({"estimator": f"all {len(single)} estimators (shared)",
                   "rows": sum(r["rows"] for r in shared), "seconds": total})
    info = machine()
    print_table(single, args.budget, f"each estimator alone, {N_BOOT} bootstrap resamples ({info['cpu']})")
    print_table(shared, args.budget,
                f"shared bootstrap, {N_BOOT} resamples: {total:.2f} s of {args.budget:g} s")
    settings = {**info, "n_boot": N_BOOT, **{k: v for k, v in vars(args).items() if k != "out"}}
    result = {"single": single, "shared": shared, "total_seconds": total,
              "within_budget": total <= args.budget, "settings": settings}
    write_text_atomic(args.out, json.dumps(result, indent=2, default=str))
    Console().print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
