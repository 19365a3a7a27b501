"""The package's shape: no import cycles between recrl's modules."""

from __future__ import annotations

import ast
from pathlib import Path

import torch

import recrl

PACKAGE = Path(recrl.__file__).parent


def module_name(path: Path) -> str:
    """``recrl.a.b`` of ``recrl/a/b.py`` (``recrl.a`` of ``recrl/a/__init__.py``)."""
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """The recrl modules ``path`` imports anywhere in its body (also inside functions)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        found.update(name for name in names if name in known)
    return found


def import_graph() -> dict[str, set[str]]:
    """``{module: modules it imports}`` over every module of the package."""
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    known = set(paths)
    return {name: imported_modules(path, known) - {name} for name, path in paths.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first repeated at the end), or ``None``."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = 2
        path.pop()
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_known_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_recrl_has_no_import_cycles() -> None:
    graph = import_graph()
    assert "recrl.stages" in graph and "recrl.train" in graph["recrl.cli"]
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph) or [])}"


def test_the_contracts_build_on_the_signal_registry_alone() -> None:
    graph = import_graph()
    assert graph["recrl.env.signals"] == set()  # torch only: recrl.types imports it
    assert graph["recrl.types"] == {"recrl.env.signals"}


def test_stages_know_nothing_of_training_or_evaluation() -> None:
    graph = import_graph()
    assert not graph["recrl.stages"] & {"recrl.train", "recrl.evaluate", "recrl.loop"}
    assert "recrl.train" not in graph["recrl.evaluate"]


def env_instances() -> list[object]:
    """One small environment of each kind recrl ships."""
    from recrl.data.synthetic import SyntheticWorld
    from recrl.env.gym import GymAdapter
    from recrl.env.simulator import RecEnv
    from recrl.rewards import ClickReward

    world = SyntheticWorld(n_items=20, n_users=10, seed=0)
    rec_env = RecEnv(world, ClickReward(), horizon=5, slate_size=2, history_len=3)
    rec_env.reset(4, seed=0)
    gym_env = GymAdapter("CartPole-v1", history_len=2)
    gym_env.reset(3, seed=0)
    return [rec_env, gym_env]


def test_every_environment_satisfies_the_env_protocol() -> None:
    import inspect

    from recrl.types import Env

    for env in env_instances():
        assert isinstance(env, Env), type(env).__name__
        for method in ("reset", "observe", "step"):
            wanted = list(inspect.signature(getattr(Env, method)).parameters)[1:]
            assert list(inspect.signature(getattr(env, method)).parameters) == wanted, (type(env), method)
        obs = env.observe()
        slates = torch.zeros(obs.batch_size, env.slate_size, dtype=torch.long)
        next_obs, reward, done, _ = env.step(slates)
        assert reward.shape == done.shape == env.alive.shape == (obs.batch_size,)
        assert next_obs.items.shape == (obs.batch_size, env.history_len, env.slate_size)
