"""RecSim NG's interest-evolution simulation, timed the way ``bench_env.py`` times recrl's.

A reference point measured on the same machine in the same sitting: Google's RecSim NG
(``recsim_ng``, TensorFlow) steps ``--num-users`` users of its stock interest-evolution
network (``create_interest_evolution_simulation_network``: 2 topics, frozen corpus, history
15, slate of 2 chosen by its collaborative-filtering recommender, i.e. its loop runs its agent
too) for ``--num-docs`` documents, in graph mode (``TFRuntime(graph_compile=True).execute``, a
``tf.while_loop`` inside ``tf.function``). After a warm-up call (which traces the graph), the
best of ``--reps`` calls of ``--steps`` steps gives user-steps/s. Prints a table, writes JSON.

recrl does not depend on RecSim NG. It installs in its own virtual environment (pins found on
Python 3.11, 2026-12: edward2 0.0.2 breaks with SciPy >= 1.10, recsim_ng uses ``np.Inf``,
gym >= 0.25 rejects its tensor shapes)::

    python3 -m venv /tmp/recsim && /tmp/recsim/bin/pip install "tensorflow==2.15.*" \\
        "tensorflow-probability==0.23.*" "numpy<2" "scipy<1.10" "gym==0.23.1" recsim_ng
    /tmp/recsim/bin/python scripts/bench_recsim_ng.py --out bench_recsim_ng.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from importlib.metadata import PackageNotFoundError, version


def parse() -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-users", type=int, default=1000)
    parser.add_argument("--num-docs", type=int, nargs="+", default=[100, 10_000])
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--out", default="bench_recsim_ng.json")
    return parser.parse_args()


def main() -> None:
    """Time each catalogue size, print the table, write the JSON."""
    args = parse()
    try:
        import tensorflow as tf
        from recsim_ng.applications.recsys_partially_observable_rl import simulation_config
        from recsim_ng.core import network as network_lib
        from recsim_ng.lib.tensorflow import runtime
    except ImportError as err:
        sys.exit(f"bench_recsim_ng: RecSim NG is not installed here ({err}); install it in its own "
                 "environment as this script's docstring shows")
    tf.random.set_seed(0)
    rows = []
    for docs in args.num_docs:
        variables, _ = simulation_config.create_interest_evolution_simulation_network(
            num_users=args.num_users, num_docs=docs)
        sim = runtime.TFRuntime(network=network_lib.Network(variables=variables), graph_compile=True)

        def run(steps: int, sim=sim) -> float:
            start = time.perf_counter()
            out = sim.execute(num_steps=tf.constant(steps, dtype=tf.int32))
            out["metrics state"].get("cumulative_reward").numpy()  # the results exist
            return time.perf_counter() - start

        run(args.warmup)  # traces the graph
        best = min(run(args.steps) for _ in range(args.reps))
        rows.append({"num_users": args.num_users, "num_docs": docs, "slate_size": 2, "steps": args.steps,
                     "seconds": best, "user_steps_per_s": args.num_users * args.steps / best})
        print(f"RecSim NG interest evolution: {docs:>6,} docs, {args.num_users:,} users: "
              f"{rows[-1]['user_steps_per_s']:>10,.0f} user-steps/s", flush=True)
    try:
        recsim_version = version("recsim_ng")
    except PackageNotFoundError:
        recsim_version = "unknown"
    facts = {"recsim_ng": recsim_version, "tensorflow": tf.__version__, "cpus": os.cpu_count(),
             "tf_intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads()}
    with open(args.out, "w") as f:
        json.dump({"facts": facts, "rows": rows}, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
