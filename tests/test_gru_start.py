"""The GRU user model learns its start-of-session state (``h0``) from the sessions' first rows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from recrl.behavior.fit import TrainingSettings
from recrl.behavior.gru import GRUBehavior
from recrl.data.preprocess import log_frame
from recrl.types import Interactions

N_ITEMS, LENGTH = 5, 8


def first_step_log(n_users: int, seed: int) -> Interactions:
    """Random items; the first shown item of a session is clicked with probability 0.9, every
    later one with 0.1 (what the start state alone can tell apart)."""
    rng = np.random.default_rng(seed)
    rows = [(u, int(rng.integers(N_ITEMS)), t, int(rng.random() < (0.9 if t == 0 else 0.1)))
            for u in range(n_users) for t in range(LENGTH)]
    log = log_frame(pd.DataFrame(rows, columns=["user", "item", "time", "click"]))
    valid = log["user"] >= int(0.8 * n_users)
    return Interactions(train=log[~valid].reset_index(drop=True), valid=log[valid].reset_index(drop=True),
                        items=pd.DataFrame(index=range(N_ITEMS)), n_users=n_users, n_items=N_ITEMS)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_first_steps_click_rate_is_learned(seed: int) -> None:
    model = GRUBehavior(N_ITEMS, dim=8, hidden=8,
                        training=TrainingSettings(lr=3e-2, epochs=60, patience=60, max_len=LENGTH, seed=seed))
    before = model.h0.detach().clone()
    model.fit(first_step_log(200, seed))
    assert not torch.equal(model.h0.detach(), before)  # fitting moves the start state
    start = model.initial_state(1)
    first = model.score_all(start).click_prob
    later = model.score_all(model.next_state(start, torch.tensor([[0]]), torch.ones(1, 1),
                                             torch.zeros(1, 1))).click_prob
    assert float(first.mean()) > 0.75 and float(later.mean()) < 0.25
    assert not model.initial_state(2).requires_grad  # what an environment starts from holds no graph
