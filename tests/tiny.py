"""The tiny algorithm context, random observations and rollouts the algorithm unit tests share,
and the ``recrl`` subprocess runner of the end-to-end tests.

12 items, slates of 3, histories of 2 steps, horizon 5: small enough to check losses and targets
by hand.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
import multiprocessing
import multiprocessing.context
import os
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path
from types import ModuleType

import pytest
import torch

from recrl.buffer import Rollout
from recrl.data.synthetic import SyntheticWorld
from recrl.env.simulator import RecEnv
from recrl.loop import collect_episodes
from recrl.rewards import ClickReward
from recrl.types import AlgoContext, Obs, Policy

N_ITEMS, K, L, H = 12, 3, 2, 5


def make_ctx(slate_size: int = K, **kwargs) -> AlgoContext:
    """The tiny context (``kwargs`` override any field); item ``i`` has popularity ``i``."""
    args = dict(n_items=N_ITEMS, slate_size=slate_size, history_len=L, horizon=H,
                device=torch.device("cpu"), seed=0, item_popularity=torch.arange(N_ITEMS).float(),
                behavior=None, reward=ClickReward())
    args.update(kwargs)
    return AlgoContext(**args)


def random_obs(b: int, gen: torch.Generator, k: int = K) -> Obs:
    """Histories with real items, some padding slots and random clicks."""
    items = torch.randint(0, N_ITEMS + 1, (b, L, k), generator=gen)
    clicks = (torch.rand(b, L, k, generator=gen) < 0.3).float() * (items < N_ITEMS).float()
    return Obs(items=items, clicks=clicks, step=torch.randint(0, H, (b,), generator=gen))


def collect_rollout(policy: Policy, n_users: int = 6) -> Rollout:
    """One horizon of ``policy`` (exploring) in a 3-topic world; checks that some users left early."""
    world = SyntheticWorld(n_items=N_ITEMS, n_users=10, n_topics=3, horizon=H, leave_bias=-0.5, seed=0)
    env = RecEnv(world, ClickReward(), horizon=H, slate_size=K, history_len=L)
    roll = collect_episodes(policy, env, env.reset(n_users, seed=0))
    assert 0 < float(roll.valid.sum()) < roll.valid.numel()  # some users left early
    return roll


# what a ``recrl train`` imports, loaded once into the fork server that ``run_recrl`` forks from
PRELOADED = ("recrl.cli", "recrl.train", "recrl.evaluate", "recrl.stages", "torch._dynamo",
             "matplotlib.figure", "matplotlib.backends.backend_agg", "tensorboard.compat.proto.event_pb2")


def run_recrl(*args: str, cwd: Path, cache: Path | None = None, timeout: float = 300, fresh: bool = False,
              **environ: str) -> subprocess.CompletedProcess:
    """``recrl <args>`` in a process of its own from ``cwd``, its output captured, as a user would
    run it: ``RECRL_DEBUG`` off (errors are the one line a user sees), the recrl cache ``cache``
    (``None``: whatever this process's environment says) and the extra environment variables
    ``environ`` (e.g. ``OMP_NUM_THREADS="1"``).

    The process is forked from a server that has imported recrl, torch and the rest once
    (:data:`PRELOADED`; ``multiprocessing``'s fork server), so it starts in milliseconds where
    ``python -m recrl.cli`` spends 3-5 s of a core on imports; it runs the console script's entry
    point with its own environment, working folder, stdout, stderr and exit code.
    ``fresh=True``: a new interpreter (``python -m recrl.cli``), for what the start itself decides
    (signal dispositions inherited across exec, the import-time environment)."""
    env = {**os.environ, "RECRL_DEBUG": "", **environ}
    if cache is not None:
        env["RECRL_CACHE_DIR"] = str(cache)
    if fresh:
        return subprocess.run([sys.executable, "-m", "recrl.cli", *args], cwd=cwd, env=env,
                              capture_output=True, text=True, timeout=timeout)
    return _forked_recrl(list(args), cwd, env, timeout)


@functools.cache
def _fork_server() -> multiprocessing.context.ForkServerContext:
    """The fork-server context, its preloads set once (they matter when its server starts)."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(PRELOADED))
    return context


def _forked_recrl(args: list[str], cwd: Path, env: dict[str, str],
                  timeout: float) -> subprocess.CompletedProcess:
    """``recrl <args>`` in a child of the fork server (see :func:`run_recrl`)."""
    with tempfile.TemporaryDirectory() as folder:
        out, err = Path(folder) / "stdout", Path(folder) / "stderr"
        child = _fork_server().Process(target=_recrl_child, args=(args, str(cwd), env, str(out), str(err)))
        child.start()
        child.join(timeout)
        if child.is_alive():
            child.kill()
            child.join()
            raise subprocess.TimeoutExpired(["recrl", *args], timeout, out.read_text(), err.read_text())
        return subprocess.CompletedProcess(["recrl", *args], child.exitcode, out.read_text(), err.read_text())


def _recrl_child(args: list[str], cwd: str, env: dict[str, str], out: str, err: str) -> None:
    """The forked process: this run's environment, folder and output files, then the console
    script's entry point; exits with its code as ``recrl`` would."""
    os.chdir(cwd)
    sys.path.insert(0, cwd)  # as ``python -m`` puts its working folder first
    os.environ.clear()
    os.environ.update(env)
    for fd, path in ((1, out), (2, err)):
        opened = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(opened, fd)
        os.close(opened)
    sys.stdout = open(1, "w", encoding="utf-8", closefd=False)  # noqa: SIM115 (the process's own)
    sys.stderr = open(2, "w", encoding="utf-8", closefd=False, buffering=1)  # noqa: SIM115
    if env.get("OMP_NUM_THREADS"):
        torch.set_num_threads(int(env["OMP_NUM_THREADS"]))
    from recrl.cli import main

    try:
        code = main(args)
    except SystemExit as stop:  # as the interpreter ends on one: None is 0, a message is printed with 1
        code = stop.code if isinstance(stop.code, int) else 0 if stop.code is None else 1
        if not isinstance(stop.code, int | None):
            print(stop.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
        code = 1
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def refused_in_process(*args: str, cwd: Path, monkeypatch: pytest.MonkeyPatch,
                       capsys: pytest.CaptureFixture[str]) -> list[str]:
    """``recrl <args>`` through the console script's entry point in this process, from ``cwd``
    with the recrl cache ``cwd/cache`` and ``RECRL_DEBUG`` off, which must refuse it with exit
    code 2 (returned, or raised as ``SystemExit`` from inside a run as the process would exit):
    the lines it wrote to stderr. A fraction of a second where a ``recrl`` process takes
    seconds to start; ``tests/test_cli.py`` checks that a real process exits the same way."""
    from recrl.cli import main

    monkeypatch.chdir(cwd)
    monkeypatch.setenv("RECRL_CACHE_DIR", str(cwd / "cache"))
    monkeypatch.delenv("RECRL_DEBUG", raising=False)
    try:
        code = main(list(args))
    except SystemExit as stop:
        code = stop.code
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2, lines
    return lines


def train_smoke(tmp_path: Path, *overrides: str, cache: Path | None = None) -> tuple[dict, list[dict]]:
    """``recrl train experiment=smoke <overrides>`` in a subprocess (one thread; the recrl cache
    ``cache``, by default one of its own under ``tmp_path``): the run's ``report.json`` and its
    ``metrics.jsonl`` rows."""
    proc = run_recrl("train", "experiment=smoke", *overrides, cwd=tmp_path, cache=cache or tmp_path / "cache",
                     OMP_NUM_THREADS="1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = next((tmp_path / "outputs" / "train").glob("20*"))
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return json.loads((run / "report.json").read_text()), rows


SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def load_script(name: str) -> ModuleType:
    """The module ``scripts/<name>.py`` (scripts are not a package), imported without running it."""
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # before running it: dataclasses look their module up there
    spec.loader.exec_module(module)
    return module
