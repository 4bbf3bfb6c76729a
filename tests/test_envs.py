import pytest
import torch

from nnmark import envs
from nnmark.errors import NnmarkError
from nnmark.oracles import TorchOracle

NEW = ("bf16-autocast", "channels-last", "torchscript-frozen")


class Untraceable(torch.nn.Module):
    """Runs eagerly but refuses TorchScript tracing, as a model with an untraceable op does."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        if torch.jit.is_tracing():
            raise RuntimeError("this op cannot be traced")
        return self.inner(x)


def test_registry_keeps_the_old_environments_and_adds_the_new():
    for name in ("float32", "float64", "mkldnn-off", "batch1", *NEW):
        assert envs.get(name).name == name
    with pytest.raises(NnmarkError, match="unknown environment"):
        envs.get("float16-magic")


def test_new_environments_change_numerics_not_labels_and_leave_the_model_alone(lenet, mnist):
    x = mnist.test.x[:100]
    reference = TorchOracle(lenet, mnist.shape)
    p_ref, y_ref = reference.probabilities(x), reference.labels(x)
    gaps = {}
    for name in NEW:
        oracle = envs.get(name).oracle(lenet, mnist.shape)
        assert torch.equal(oracle.labels(x), y_ref), name
        gaps[name] = (oracle.probabilities(x) - p_ref).abs().max().item()
        loss, grad = oracle.gradient(lambda z: z[:, 0], x[:3], on="logits")
        assert grad.shape == (3, *mnist.shape) and grad.dtype == torch.float32 and grad.abs().sum() > 0, name
        assert oracle.queries == 203
    assert gaps["bf16-autocast"] > 1e-4  # bfloat16 keeps 8 mantissa bits: it really ran in bf16
    assert all(gap < 1e-2 for gap in gaps.values()), gaps
    assert all(p.dtype == torch.float32 and p.is_contiguous() for p in lenet.parameters())


def test_available_lists_unavailable_environments_with_reasons(lenet, mnist):
    listed = {s.name: s for s in envs.available()}
    assert set(listed) == set(envs.KNOWN)
    assert all(s.available == (s.reason == "") for s in listed.values())
    assert set(envs.ENVIRONMENTS) == {name for name, s in listed.items() if s.available}
    if not torch.cuda.is_available():
        assert not listed["cuda"].available and "CUDA" in listed["cuda"].reason
        with pytest.raises(NnmarkError, match="not available here"):
            envs.get("cuda")
    per_model = {s.name: s for s in envs.available(Untraceable(lenet), mnist.shape)}
    assert not per_model["torchscript-frozen"].available
    assert "cannot be traced" in per_model["torchscript-frozen"].reason
    assert per_model["float32"].available and per_model["float64"].available
    with pytest.raises(ValueError):
        envs.available(lenet)


OTHER_RUNTIMES = ("torch-compile", "onnxruntime", "onnxruntime-basic", "onnxruntime-noopt", "onednn-avx2",
                  "onednn-sse41", "onednn-avx512-core")


def test_registry_knows_the_other_runtimes_and_says_why_one_cannot_run(monkeypatch):
    assert set(OTHER_RUNTIMES) <= set(envs.KNOWN)
    monkeypatch.setattr(envs, "_cpu_flags", lambda: {"sse4_1"})
    listed = {s.name: s for s in envs.available()}
    assert listed["onednn-sse41"].available
    assert not listed["onednn-avx2"].available and listed["onednn-avx2"].reason == "the CPU lacks avx2"
    assert "avx512f" in listed["onednn-avx512-core"].reason


def test_torch_compile_answers_as_float32_and_a_compiler_failure_is_reported(lenet, mnist, monkeypatch):
    x = mnist.test.x[:64]
    compiled = envs.get("torch-compile").oracle(lenet, mnist.shape)
    reference = TorchOracle(lenet, mnist.shape)
    assert torch.equal(compiled.labels(x), reference.labels(x))
    assert (compiled.probabilities(x) - reference.probabilities(x)).abs().max() < 1e-5

    def broken(module, **kwargs):
        class Failing(torch.nn.Module):
            def forward(self, x):
                raise AssertionError("InductorError: C compiler not found\nlong traceback")

        return Failing()

    monkeypatch.setattr(torch, "compile", broken)
    with pytest.raises(NnmarkError) as failed:  # what envs.available lists as the reason
        envs.get("torch-compile").oracle(lenet, mnist.shape)
    assert str(failed.value) == ("environment 'torch-compile' cannot run this model: "
                                 "torch.compile failed: InductorError: C compiler not found")
