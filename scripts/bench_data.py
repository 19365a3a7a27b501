"""Benchmark dataset preparation: cold load, cache miss, cache hit, peak memory, scaling.

Each measurement runs in a fresh subprocess so imports and caches do not leak between them.
Prints a table and writes JSON.

    python scripts/bench_data.py --data-dir ../shared/data --out bench_data.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from recrl.fileio import write_text_atomic

REPO = Path(__file__).resolve().parents[1]

DATASETS = {  # name -> (config name, extra overrides, raw files measured)
    "ml100k": ("ml100k", [], ["ml-100k/u.data"]),
    "ml1m_subset": ("ml1m_subset", [], ["ml-1m/partial/ratings.users0001-2999.dat.gz"]),
    "coat": ("coat", [], ["coat/train.ascii", "coat/test.ascii"]),
    "beauty": ("beauty", [], ["seq/s3rec/Beauty.txt"]),
}

# Peak memory is the growth of the process's peak resident set during load(): everything the
# load allocated and held at its worst moment (pandas' C buffers included), beyond the imports.
_CHILD = r"""
import json, resource, sys, time
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from recrl.config import CONF_DIR
overrides = json.loads(sys.argv[1])
with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
    cfg = compose("train", overrides=overrides)
dataset = instantiate(cfg.dataset)
def rss_bytes():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
before = max(rss_bytes(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
start = time.perf_counter()
splits = dataset.load()
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
rows = len(splits.interactions.train) + len(splits.interactions.valid) + len(splits.test)
print(json.dumps({"seconds": seconds, "peak_bytes": max(peak, 0), "rows": rows,
                  "cache": dataset.last_load.get("cache")}))
"""


def run_child(overrides: list[str], data_dir: Path, cache_dir: Path | None) -> dict:
    """Load one dataset in a fresh interpreter and return its timing and memory."""
    env = {**os.environ, "RECRL_DATA_DIR": str(data_dir), "PYTHONPATH": str(REPO)}
    args = [*overrides, f"cache_dir={cache_dir}" if cache_dir else "dataset.cache_dir=null"]
    out = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(args)], env=env, capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_dataset(name: str, data_dir: Path, repeats: int) -> dict:
    """Cold (no cache), cache miss (prepare + write) and cache hit (best of ``repeats``)."""
    config, extra, raw = DATASETS[name]
    overrides = [f"dataset={config}", *extra]
    raw_bytes = sum(_raw_size(data_dir / r) for r in raw)
    cold = min((run_child(overrides, data_dir, None) for _ in range(repeats)), key=lambda r: r["seconds"])
    with tempfile.TemporaryDirectory() as tmp:
        miss = run_child(overrides, data_dir, Path(tmp))
        hits = [run_child(overrides, data_dir, Path(tmp)) for _ in range(repeats)]
    hit = min(hits, key=lambda r: r["seconds"])
    return {"dataset": name, "rows": cold["rows"], "raw_bytes": raw_bytes, "cold_s": cold["seconds"],
            "miss_s": miss["seconds"], "hit_s": hit["seconds"], "peak_bytes": cold["peak_bytes"],
            "peak_over_raw": cold["peak_bytes"] / raw_bytes}


def _raw_size(path: Path) -> int:
    """Uncompressed size of a data file (gzip files are measured decompressed)."""
    if path.suffix == ".gz":
        import gzip

        with gzip.open(path, "rb") as f:
            return sum(len(chunk) for chunk in iter(lambda: f.read(1 << 20), b""))
    return path.stat().st_size


def bench_scaling(sizes: list[int], repeats: int) -> list[dict]:
    """Cold load of generated ``u.data``-format files of growing size (cost should be linear)."""
    results = []
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            root = Path(tmp) / f"n{n}" / "ml-100k"
            root.mkdir(parents=True)
            users, items = rng.integers(1, 1 + n // 100, n), rng.integers(1, 5001, n)
            ratings, times = rng.integers(1, 6, n), rng.integers(8e8, 9e8, n)
            with open(root / "u.data", "w") as f:
                f.writelines(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in zip(users, items, ratings, times,
                                                                          strict=True))
            best = min((run_child(["dataset=ml100k"], root.parent, None) for _ in range(repeats)),
                       key=lambda r: r["seconds"])
            results.append({"rows": n, "raw_bytes": (root / "u.data").stat().st_size,
                            "cold_s": best["seconds"], "us_per_row": 1e6 * best["seconds"] / n,
                            "peak_bytes": best["peak_bytes"]})
    return results


def marginal_peak_over_raw(scaling: list[dict]) -> float:
    """Extra peak memory per extra raw byte between the smallest and largest generated file:
    the load's memory cost without the fixed cost of its first use of pandas' parser."""
    small, large = scaling[0], scaling[-1]
    return (large["peak_bytes"] - small["peak_bytes"]) / (large["raw_bytes"] - small["raw_bytes"])


def main() -> None:
    """Run the benchmark, print tables, write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=Path("bench_data.json"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sizes", type=int, nargs="*", default=[100_000, 200_000, 400_000, 800_000])
    args = parser.parse_args()
    start = time.perf_counter()
    present = [n for n, (_, _, raw) in DATASETS.items() if all((args.data_dir / r).exists() for r in raw)]
    datasets = [bench_dataset(n, args.data_dir, args.repeats) for n in present]
    scaling = bench_scaling(args.sizes, args.repeats)
    console = Console()
    table = Table(title="dataset preparation (best of repeats, fresh process each)")
    for col in ("dataset", "rows", "raw MB", "cold s", "cache miss s", "cache hit s", "peak MB", "peak/raw"):
        table.add_column(col, justify="right")
    for r in datasets:
        table.add_row(r["dataset"], f"{r['rows']:,}", f"{r['raw_bytes'] / 1e6:.1f}", f"{r['cold_s']:.3f}",
                      f"{r['miss_s']:.3f}", f"{r['hit_s']:.3f}", f"{r['peak_bytes'] / 1e6:.1f}",
                      f"{r['peak_over_raw']:.2f}")
    console.print(table)
    scale = Table(title="scaling: cold load of generated u.data files")
    for col in ("rows", "raw MB", "cold s", "µs per row", "peak MB"):
        scale.add_column(col, justify="right")
    for r in scaling:
        scale.add_row(f"{r['rows']:,}", f"{r['raw_bytes'] / 1e6:.1f}", f"{r['cold_s']:.3f}",
                      f"{r['us_per_row']:.2f}", f"{r['peak_bytes'] / 1e6:.1f}")
    console.print(scale)
    if len(scaling) > 1:
        marginal = marginal_peak_over_raw(scaling)
        console.print(f"marginal peak memory per raw byte: {marginal:.2f}x")
    else:
        marginal = float("nan")
        console.print("marginal peak memory per raw byte: needs two --sizes or more")
    result = {"datasets": datasets, "scaling": scaling, "marginal_peak_over_raw": marginal,
              "python": sys.version.split()[0],
              "cpus": os.cpu_count(), "seconds": time.perf_counter() - start,
              "note": "peak = growth of the peak resident set during a cold load() (fresh process)"}
    write_text_atomic(args.out, json.dumps(result, indent=2))
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
