"""Pessimism where the simulator does not know (``env.pessimism``): penalties on simulated steps
whose outcome the behavior-model ensemble's members disagree about.

A policy trained in a learned simulator drifts to where the simulator is wrong and flattering.
With ``behavior.ensemble=K > 1`` every simulated response carries the members' disagreement
(:attr:`~recrl.types.Response.uncertainty`, the standard deviation of each shown item's click
probability over the members) and this turns it into a cost, as model-based offline RL does:

- ``penalty`` (MOPO, Yu et al., NeurIPS 2020): the step's reward minus ``penalty`` times the
  slate's summed uncertainty, so the policy gains only where the members agree that it gains;
- ``halt_threshold`` (MOReL, Kidambi et al., NeurIPS 2020): a step where some shown item's
  uncertainty exceeds the threshold ends the episode in an absorbing "halt" state, and its
  reward is ``-halt_penalty``: leaving the known region costs the rest of the session.

Both are off by default (``penalty: 0``, ``halt_threshold: null``). Ground-truth environments
have no uncertainty, so evaluation there is never penalised, and the training simulator's
evaluation runs without pessimism (the report shows what the simulator itself predicts).
"""

from __future__ import annotations

from torch import Tensor

from recrl.types import RecrlError, Response


class Pessimism:
    """Uncertainty penalties of simulated steps (see the module docstring).

    Example::

        pessimism = Pessimism(penalty=1.0, halt_threshold=0.2, halt_penalty=1.0)
        reward, halted = pessimism.apply(reward, response)   # [B], [B] bool
    """

    def __init__(self, penalty: float = 0.0, halt_threshold: float | None = None,
                 halt_penalty: float = 0.0) -> None:
        if penalty < 0 or halt_penalty < 0:
            raise RecrlError(f"env.pessimism: penalty={penalty} and halt_penalty={halt_penalty} must be >= 0")
        if halt_threshold is not None and halt_threshold <= 0:
            raise RecrlError(f"env.pessimism.halt_threshold={halt_threshold} must be > 0 (null: off)")
        self.penalty, self.halt_threshold, self.halt_penalty = penalty, halt_threshold, halt_penalty

    @property
    def active(self) -> bool:
        """Whether any penalty is on."""
        return self.penalty > 0 or self.halt_threshold is not None

    def apply(self, reward: Tensor, response: Response) -> tuple[Tensor, Tensor | None]:
        """The penalised reward ``[B]`` and which users halt ``[B]`` (``None`` when the halt rule is
        off); unchanged when the response has no uncertainty (a single model, the ground truth)."""
        uncertainty = response.uncertainty
        if uncertainty is None or not self.active:
            return reward, None
        reward = reward - self.penalty * uncertainty.sum(1)
        if self.halt_threshold is None:
            return reward, None
        halted = (uncertainty > self.halt_threshold).any(1)
        return reward.masked_fill(halted, -self.halt_penalty), halted
