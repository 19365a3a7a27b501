"""The Hydra side of ``recrl sweep search=<name>``: a :class:`~hydra.plugins.sweeper.Sweeper`
that hands the work to :func:`recrl.search.run_search`.

Hydra only instantiates sweepers defined under the ``hydra_plugins`` package, and imports every
module there at start-up, so this module stays small and imports Optuna only when a search runs.
Its config is ``conf/hydra/sweeper/recrl_optuna.yaml``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class RecrlOptunaSweeper(Sweeper):
    """Runs an Optuna study over ``search.space`` through the configured Hydra launcher."""

    def __init__(self) -> None:
        self.config: DictConfig | None = None
        self.launcher: Any = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        """Keep the config and build the launcher the trials run on."""
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> Sequence[Any]:
        """Run the search; ``arguments`` are the command line's overrides."""
        from recrl.search import run_search

        assert self.config is not None
        return run_search(self.config, self.launcher, arguments)
