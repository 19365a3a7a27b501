"""``scripts/item_prior_probe.py``: the linear probe credits a prior with exactly what it knows of
the item vectors beyond their topic."""

from __future__ import annotations

import torch
from tiny import N_ITEMS, load_script, make_ctx

from recrl.algos.dqn import DQN
from recrl.data.synthetic import SyntheticWorld


def test_the_probe_reads_the_true_vectors_fully_and_topic_content_not_at_all() -> None:
    probe = load_script("item_prior_probe").probe
    world = SyntheticWorld(n_items=400, n_users=10, n_topics=5, horizon=4, seed=3)
    topic, vectors = world.topic, world.item_emb
    truth = probe(vectors, vectors, topic)
    assert truth["within_topic_r2"] > 0.999 and truth["whole_vector_r2"] > 0.999
    # content that does not depend on the within-topic direction (quality, price, clickbait)
    content = torch.stack([world.quality, world.price, world.is_bait], 1)
    blind = probe(content, vectors, topic)
    assert abs(blind["within_topic_r2"]) < 0.1   # nothing beyond the topic
    assert 0.5 < blind["whole_vector_r2"] < 0.95  # the topic dummies give the topic part only
    # half of the direction, plus noise: credited in between
    gen = torch.Generator().manual_seed(0)
    within = vectors - torch.stack([vectors[topic == k].mean(0) for k in range(5)])[topic]
    partial = probe(within[:, :2] + 0.01 * torch.randn(400, 2, generator=gen), vectors, topic)
    assert 0.1 < partial["within_topic_r2"] < 0.9


def test_within_topic_directions_average_to_zero_in_every_topic() -> None:
    within_topic = load_script("item_prior_probe").within_topic
    vectors = torch.tensor([[1.0, 0.0], [3.0, 2.0], [5.0, 5.0]])
    out = within_topic(vectors, torch.tensor([0, 0, 1]))
    assert torch.allclose(out, torch.tensor([[-1.0, -1.0], [1.0, 1.0], [0.0, 0.0]]))


def test_a_trained_policy_is_probed_through_the_item_table_it_scores_with() -> None:
    dqn = DQN(make_ctx(slate_size=1), demonstrations=0, dim=8)
    table = load_script("item_prior_probe").policy_item_table(dqn)
    assert table.shape == (N_ITEMS, 8)
    assert torch.equal(table, dqn.q.item_table().detach()[:N_ITEMS])
