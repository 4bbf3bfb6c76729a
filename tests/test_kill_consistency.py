"""The endpoint consistency check (``oracles.remote``) on an in-process endpoint (fast: mutation-tested)."""

import numpy as np
import pytest
import torch

from nnmark.errors import EndpointInconsistent, QueryBudgetExceeded
from nnmark.oracles import EndpointOracle, EndpointSpec

SHAPE = (1, 2, 2)


class Replica(EndpointOracle):
    """An endpoint whose answer to each input is a row fixed by the input's first pixel, moved by ``drift`` on
    every request after the first (an endpoint that answers the same input two ways when drift is not 0)."""

    def __init__(self, drift=0.0, output="probabilities", budget=None, seed=0, **fields):
        self.drift, self.output, self.asked = drift, output, []
        super().__init__(EndpointSpec("http://127.0.0.1:1", **fields), budget=budget, input_shape=SHAPE, num_classes=3,
                         seed=seed)

    def _metadata(self):
        return {"name": "model", "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, *SHAPE]}],
                "outputs": [{"name": self.output, "datatype": "INT64" if self.output == "label" else "FP32",
                             "shape": [-1] if self.output == "label" else [-1, 3]}]}

    def _exchange(self, inputs, request_id):
        x = inputs["input"].reshape(len(inputs["input"]), -1)[:, 0].astype(np.float64)
        self.asked.append(x.copy())
        if self.output == "label":
            return {"label": (x * 2.99).astype(np.int64)}
        shift = self.drift if len(self.asked) > 1 else 0.0
        first = np.where(x > 0.5, 0.5, 0.25) - shift
        return {self.output: np.stack([first, 0.75 - first, np.full_like(x, 0.25)], axis=1).astype(np.float32)}

    def close(self):
        pass


def _queries(n):
    return torch.linspace(0, 1, n).view(n, 1, 1, 1).expand(n, *SHAPE).contiguous()


def test_each_call_re_asks_its_samples_in_a_separate_request_and_counts_them():
    oracle = Replica(consistency_samples=3)
    p, labels = oracle.predict(_queries(10))
    assert len(oracle.asked) == 2 and len(oracle.asked[0]) == 10 and len(oracle.asked[1]) == 3
    assert set(oracle.asked[1].tolist()) <= set(oracle.asked[0].tolist()) and len(set(oracle.asked[1])) == 3
    assert oracle.queries == 13 and p.shape == (10, 3) and torch.equal(labels, p.argmax(1))
    small = Replica(consistency_samples=3)
    small.probabilities(_queries(2))
    assert [len(a) for a in small.asked] == [2, 2] and small.queries == 4


def test_the_re_asked_samples_are_drawn_by_the_seeded_generator():
    draws = []
    for seed in (0, 0, 1):
        oracle = Replica(consistency_samples=2, seed=seed)
        for _ in range(4):
            oracle.labels(_queries(40))
        draws.append([a.tolist() for a in oracle.asked[1::2]])
    assert draws[0] == draws[1] and draws[0] != draws[2]


def test_the_re_asks_count_against_the_budget():
    Replica(consistency_samples=2, budget=12).predict(_queries(10))
    with pytest.raises(QueryBudgetExceeded):
        Replica(consistency_samples=2, budget=11).predict(_queries(10))


@pytest.mark.parametrize("fields", [{"consistency_check": False}, {"output_kind": "labels", "output_name": "label"}])
def test_no_re_ask_without_the_check_or_on_a_label_only_endpoint(fields):
    output = fields.get("output_name", "probabilities")
    oracle = Replica(drift=0.25, output=output, budget=10, **fields)
    oracle.labels(_queries(10))
    assert len(oracle.asked) == 1 and oracle.queries == 10


def test_a_probability_that_moves_by_more_than_the_tolerance_is_refused_with_its_spread():
    with pytest.raises(EndpointInconsistent, match="max change 0.25 > tolerance 0.2") as caught:
        Replica(drift=0.25, consistency_atol=0.2).predict(_queries(10))
    assert caught.value.spread == 0.25
    with pytest.raises(EndpointInconsistent):
        Replica(drift=1e-4).labels(_queries(4))  # over the default tolerance 1e-5 of a probability, labels unmoved
    with pytest.raises(EndpointInconsistent):
        Replica(drift=2 ** -20, consistency_atol=0).probabilities(_queries(4))  # 0: the bitwise check


def test_a_move_up_to_the_tolerance_is_accepted_and_the_first_answers_kept():
    oracle = Replica(drift=0.25, consistency_atol=0.25)
    p, labels = oracle.predict(_queries(10))
    assert torch.equal(p, Replica().predict(_queries(10))[0]) and len(oracle.asked) == 2
    assert Replica(drift=2 ** -20).labels(_queries(4)).shape == (4,)
