"""What a checkpoint holds to resume a gradient learner: :class:`LearnerState`."""

from __future__ import annotations

from typing import Any, ClassVar


class LearnerState:
    """Mixin giving ``state_dict`` / ``load_state_dict`` to a learner made of networks, one
    ``optimizer``, integer counters and a random ``generator``.

    The class names its networks (``nn.Module`` attributes) in :attr:`networks` and its counters
    in :attr:`counters`; the state is a dict with one entry per network, ``optimizer``, one per
    counter and ``generator``, so a checkpoint's keys are the attribute names. A learner with
    more to keep (a weight average, a KL coefficient) extends both methods through ``super()``.

    Example::

        class MyLearner(LearnerState):
            networks = ("q", "q_target")
            counters = ("acted_steps", "updates")
    """

    networks: ClassVar[tuple[str, ...]] = ()
    counters: ClassVar[tuple[str, ...]] = ("updates",)

    def state_dict(self) -> dict[str, Any]:
        """Every network's weights, the optimizer, the counters and the generator's state."""
        state: dict[str, Any] = {name: getattr(self, name).state_dict() for name in self.networks}
        state["optimizer"] = self.optimizer.state_dict()  # type: ignore[attr-defined]
        state.update({name: getattr(self, name) for name in self.counters})
        state["generator"] = self.generator.get_state()  # type: ignore[attr-defined]
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`."""
        for name in self.networks:
            getattr(self, name).load_state_dict(state[name])
        self.optimizer.load_state_dict(state["optimizer"])  # type: ignore[attr-defined]
        for name in self.counters:
            setattr(self, name, int(state[name]))
        self.generator.set_state(state["generator"])  # type: ignore[attr-defined]
