"""Test set-up: caches go to a temporary folder so a run leaves nothing behind."""

import json
import os
import shutil
import tempfile
import tracemalloc

_CACHE = tempfile.mkdtemp(prefix="nnmark-test-home-")
os.environ["HOME"] = _CACHE
os.environ["XDG_CACHE_HOME"] = os.path.join(_CACHE, ".cache")
os.environ["MPLCONFIGDIR"] = os.path.join(_CACHE, "mpl")
os.environ.setdefault("NNMARK_PROGRESS", "0")
# torch's OpenMP threads busy-wait for each other; on a loaded 2-core machine that costs 10x or more.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# pytest-xdist's workers share the cores: each gets its share of threads (read by torch when it is imported).
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _WORKERS)))
LONGEST_FILES = ("test_documented.py", "test_bench_metafinger.py", "test_bench_ownership.py", "test_cli.py",
                 "test_metafinger.py")
"""Started first, so that the workers (``make test``: one file at a time each) finish together."""

import pytest  # noqa: E402
import torch  # noqa: E402

from nnmark import data, models  # noqa: E402


class _Constant(torch.nn.Module):
    """A broken model: the same logits for every input, argmax = ``label``."""

    def __init__(self, label: int, classes: int = 10):
        super().__init__()
        self.register_buffer("logits", torch.nn.functional.one_hot(torch.tensor(label), classes).float())

    def forward(self, x):
        return self.logits.expand(len(x), -1)


@pytest.fixture(scope="session")
def constant_model():
    """Makes broken models that answer one label for every input: ``constant_model(label)``."""
    return _Constant


@pytest.fixture(scope="session")
def sparse_safetensors():
    """Writes a safetensors header and a sparse body of zero bytes (no disk space): ``f(path, header, body_size)``."""

    def write(path, header: dict, body_size: int) -> None:
        raw = json.dumps(header).encode()
        with open(path, "wb") as fh:
            fh.write(len(raw).to_bytes(8, "little") + raw)
            fh.truncate(8 + len(raw) + body_size)

    return write


@pytest.fixture(scope="session")
def peak_memory():
    """Runs ``fn()`` and returns the peak of Python-tracked memory meanwhile, in bytes: ``peak_memory(fn)``."""

    def measure(fn) -> int:
        tracemalloc.start()
        try:
            fn()
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    return measure


@pytest.fixture
def forward_sizes():
    """``forward_sizes(model, run)``: (training mode, batch size) of every forward pass of ``model`` (a module or a
    list of them, and their deep copies, which keep the hook) in ``run()``."""

    def sizes(model, run):
        seen = []
        handles = [m.register_forward_pre_hook(lambda m, inputs: seen.append((m.training, len(inputs[0]))))
                   for m in (model if isinstance(model, (list, tuple)) else [model])]
        try:
            run()
        finally:
            for handle in handles:
                handle.remove()
        return seen

    return sizes


@pytest.fixture
def training_passes():
    """``training_passes(run)``: (the batch size of every forward pass of a ``Conv2d`` in training mode, of any model,
    in ``run()``; what ``run()`` returns): the passes a command's training makes, whatever models it builds."""

    def passes(run):
        seen = []
        handle = torch.nn.modules.module.register_module_forward_pre_hook(
            lambda m, inputs: seen.append(len(inputs[0])) if m.training and isinstance(m, torch.nn.Conv2d) else None)
        try:
            return seen, run()
        finally:
            handle.remove()

    return passes


@pytest.fixture(scope="session")
def mnist():
    return data.load("mnist5k")


@pytest.fixture(scope="session")
def lenet(mnist):
    """A LeNet-5 trained on mnist5k as the demo trains it (shared, read-only: attacks return copies)."""
    torch.manual_seed(0)
    model = models.build("lenet5", mnist.shape, mnist.num_classes)
    models.train(model, mnist.train, epochs=8, seed=0)
    return model


@pytest.fixture(scope="session")
def lenet_file(lenet, mnist, tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "lenet.safetensors"
    config = models.ModelConfig("lenet5", mnist.shape, mnist.num_classes, data="mnist5k",
                                accuracy=models.accuracy(lenet, mnist.test), seed=0)
    models.save(lenet, config, path)
    return path


@pytest.fixture(scope="session")
def changed_models(lenet, mnist):
    """Models that differ from ``lenet``: trained with another seed, fine-tuned hard, random weights (shared,
    read-only)."""
    from nnmark.attacks import finetune

    torch.manual_seed(7)
    other = models.build("lenet5", mnist.shape, mnist.num_classes)
    models.train(other, mnist.train, epochs=4, seed=7)
    torch.manual_seed(3)
    return {"independent": other, "random": models.build("lenet5", mnist.shape, mnist.num_classes),
            "heavy fine-tune": finetune(lenet, mnist.train.x[1000:2000], mnist.train.y[1000:2000], lr=1e-2, steps=300)}


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: item.path.name not in LONGEST_FILES)  # stable: each file keeps its order


def pytest_unconfigure(config):
    """Removes the temporary home and every cache the run wrote there."""
    shutil.rmtree(_CACHE, ignore_errors=True)
