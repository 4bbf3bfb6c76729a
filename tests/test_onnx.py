import sys

import pytest
import torch

from nnmark import envs
from nnmark.errors import AccessError, InputError, NnmarkError
from nnmark.oracles import TorchOracle
from nnmark.oracles.onnx import OnnxOracle, export, requirement

LEVELS = {"onnxruntime": "all", "onnxruntime-basic": "basic", "onnxruntime-noopt": "disabled"}


def test_onnxruntime_environments_give_float32_answers_from_their_own_kernels(lenet, mnist):
    x = mnist.test.x[:200]
    reference = TorchOracle(lenet, mnist.shape)
    p_ref, y_ref = reference.probabilities(x), reference.labels(x)
    for name, level in LEVELS.items():
        oracle = envs.get(name).oracle(lenet, mnist.shape, budget=600)
        assert isinstance(oracle, OnnxOracle) and oracle.optimization == level
        assert oracle.session.get_session_options().intra_op_num_threads == torch.get_num_threads()
        p, y = oracle.predict(x)
        assert p.dtype == torch.float32 and p.shape == (200, 10) and y.dtype == torch.int64
        assert torch.equal(y, y_ref) and torch.equal(oracle.labels(x), y)
        gap = (p - p_ref).abs().max().item()
        assert 0 < gap < 1e-5, (name, gap)  # other kernels: tiny, nonzero differences
        assert torch.equal(p, torch.softmax(oracle.logits(x), dim=1))  # softmax of ORT's float32 logits, by torch
        assert oracle.queries == 600  # logits are counted like every other answer
        with pytest.raises(NnmarkError, match="budget"):
            oracle.labels(x[:1])


def test_onnx_oracle_refuses_gradients_and_bad_inputs(lenet, mnist):
    oracle = OnnxOracle(lenet, mnist.shape, optimization="disabled")
    with pytest.raises(AccessError, match="no gradients"):
        oracle.gradient(lambda z: z[:, 0], mnist.test.x[:2])
    for bad in (mnist.test.x[:2] * 2, torch.full((1, *mnist.shape), float("nan")), torch.zeros(1, 3, 28, 28)):
        with pytest.raises(InputError):
            oracle.labels(bad)
    with pytest.raises(ValueError, match="optimization"):
        OnnxOracle(lenet, mnist.shape, optimization="max")
    onnx = pytest.importorskip("onnx")
    graph = onnx.load_from_string(export(lenet, mnist.shape)).graph  # bytes in memory, no file
    assert [i.name for i in graph.input] == ["input"] and [o.name for o in graph.output] == ["logits"]
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"


def test_without_onnxruntime_the_environments_are_listed_unavailable(lenet, mnist, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    assert "nnmark[onnx]" in requirement()
    listed = {s.name: s for s in envs.available()}
    for name in LEVELS:
        assert not listed[name].available and "onnxruntime is not installed" in listed[name].reason
        with pytest.raises(NnmarkError, match="not available here"):
            envs.get(name).oracle(lenet, mnist.shape)
