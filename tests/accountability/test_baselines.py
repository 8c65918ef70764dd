"""The research baselines answer as the libraries they wrap would: a faster form must not be a different method."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from caltrain.accountability.attribution import QueryBatch, TrainingSet
from caltrain.accountability.baselines import get_host_method
from caltrain.accountability.evaluation import train_model
from caltrain.data.datasets import load_dataset


def test_tracin_scores_and_self_influence_equal_captums_batch_tracin() -> None:
    """The interactive TracIn (training factors computed once) against captum's TracInCPFast, which recomputes
    them per call: same self-influence, same query scores, so the same ranked records."""
    from captum.influence import TracInCPFast

    train, test = load_dataset("digits")
    part = train.subset(np.arange(400))
    model, checkpoints = train_model(part, dataset="digits", epochs=3, seed=0)
    ts = TrainingSet.build(model, part.x, part.y, np.zeros(len(part), np.int64), checkpoints=checkpoints)
    queries = QueryBatch.build(ts, test.x[:25])
    method = get_host_method("tracin-cp-fast")
    method.fit(ts)
    answers = method.trace(queries, k=10)

    final = {k: v.clone() for k, v in model.state_dict().items()}

    def load(m: nn.Module, state: dict[str, object]) -> float:
        m.load_state_dict(state)
        return 1.0

    data = torch.utils.data.TensorDataset(torch.from_numpy(ts.x), torch.from_numpy(ts.y))
    reference = TracInCPFast(model, model[-1], data, checkpoints, checkpoints_load_func=load,
                             loss_fn=nn.CrossEntropyLoss(reduction="sum"), batch_size=128)
    self_influence = reference.self_influence(show_progress=False).numpy()
    scores = reference.influence((torch.from_numpy(queries.x), torch.from_numpy(queries.predicted))).numpy()
    model.load_state_dict(final)

    suspicion = method.suspicion()
    assert suspicion is not None
    np.testing.assert_allclose(suspicion, self_influence, rtol=1e-4, atol=1e-6 * np.abs(self_influence).max())
    for row, label, answer in zip(scores, queries.predicted, answers, strict=True):
        candidates = np.flatnonzero(ts.y == label)
        np.testing.assert_allclose(answer.scores, np.sort(row[candidates])[::-1][:10], rtol=1e-4,
                                   atol=1e-6 * np.abs(row).max())
        assert set(answer.positions) <= set(candidates)
