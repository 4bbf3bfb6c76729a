import os

import pytest
import torch

from nnmark import envs, models
from nnmark.errors import AccessError, InputError, NnmarkError
from nnmark.oracles import TorchOracle
from nnmark.oracles import worker
from nnmark.oracles.worker import WorkerOracle, config_for


@pytest.fixture(scope="module")
def sse41(lenet, mnist):
    made = []
    real = worker._write_model

    def write_model(*args):
        made.append(real(*args))
        return made[-1]

    worker._write_model = write_model
    try:
        oracle = envs.get("onednn-sse41").oracle(lenet, mnist.shape)
    finally:
        worker._write_model = real
    oracle.checkpoints = made
    with oracle:
        yield oracle


def test_the_worker_sees_the_isa_cap_and_answers_like_float32(sse41, lenet, mnist):
    assert isinstance(sse41, WorkerOracle)
    assert sse41.info["env"]["ONEDNN_MAX_CPU_ISA"] == "SSE41"
    assert sse41.info["env"]["OMP_NUM_THREADS"] == str(torch.get_num_threads())
    assert [os.path.basename(p) for p in sse41.checkpoints] == ["model.safetensors"]  # a zoo model: a checkpoint
    assert not any(map(os.path.exists, sse41.checkpoints))  # removed once the worker loaded it
    x = mnist.test.x[:200]
    reference = TorchOracle(lenet, mnist.shape)
    p, y = sse41.predict(x)
    assert p.dtype == torch.float32 and p.shape == (200, 10)
    assert torch.equal(y, reference.labels(x)) and torch.equal(sse41.labels(x), y)
    assert (sse41.logits(x) - reference.logits(x)).abs().max() < 1e-4
    assert (p - reference.probabilities(x)).abs().max() < 1e-5
    assert sse41.queries == 600  # logits are counted like every other answer
    with pytest.raises(AccessError, match="no gradients"):
        sse41.gradient(lambda z: z[:, 0], x[:2])
    with pytest.raises(InputError):
        sse41.labels(x[:2] - 1)


def test_an_uncapped_worker_is_bit_exact_float32_and_dies_cleanly(lenet, mnist):
    x = mnist.test.x[:50]
    oracle = WorkerOracle(lenet, mnist.shape)
    assert oracle.info["env"]["ONEDNN_MAX_CPU_ISA"] is None
    assert torch.equal(oracle.logits(x), TorchOracle(lenet, mnist.shape).logits(x))  # same kernels, same bits
    oracle.process.kill()
    oracle.process.wait()
    with pytest.raises(NnmarkError, match="died"):
        oracle.labels(x)
    with pytest.raises(NnmarkError, match="closed"):
        oracle.labels(x)
    with WorkerOracle(lenet, mnist.shape) as other:
        process = other.process
        assert other.labels(x[:3]).shape == (3,)
    assert process.poll() is not None  # the context manager stopped it


def test_the_worker_rebuilds_nnmark_architectures_and_carries_other_modules_as_a_checked_trace(lenet, mnist):
    config = config_for(lenet, mnist.shape, 10)
    assert config.arch == "lenet5" and config.width == 1.0
    narrow = models.build("resnet20", mnist.shape, 10, width=0.5)
    assert config_for(narrow, mnist.shape, 10).width == 0.5
    torch.manual_seed(0)
    foreign = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10), torch.nn.GELU()).eval()
    with pytest.raises(NnmarkError, match="matches no nnmark architecture"):
        config_for(foreign, mnist.shape, 10)
    x = mnist.test.x[:50]
    with WorkerOracle(foreign, mnist.shape) as oracle:  # a trace, run unoptimised: the eager kernels, the same bits
        assert torch.equal(oracle.logits(x), TorchOracle(foreign, mnist.shape).logits(x))
    with envs.get("onednn-sse41").oracle(foreign, mnist.shape) as capped:
        assert capped.info["env"]["ONEDNN_MAX_CPU_ISA"] == "SSE41"
        assert torch.equal(capped.labels(x), TorchOracle(foreign, mnist.shape).labels(x))
    with pytest.raises(NnmarkError, match="its torch.jit.trace answers differently"):
        WorkerOracle(BatchBranch(foreign), mnist.shape)
    with pytest.raises(NnmarkError, match="torch.jit.trace fails"):
        WorkerOracle(DictOut(foreign), mnist.shape, 10)
    with pytest.raises(ValueError):
        WorkerOracle(lenet, mnist.shape, timeout=0)


class BatchBranch(torch.nn.Module):
    """Answers batches of more than two inputs negated: a trace on two inputs cannot see that."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return -self.net(x) if x.shape[0] > 2 else self.net(x)


class DictOut(BatchBranch):
    """Returns a dict, which torch.jit.trace refuses."""

    def forward(self, x):
        return {"logits": self.net(x)}
