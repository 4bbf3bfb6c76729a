"""Model sources and cards: every kind loads the same foreign model, agrees with the eager module, and refuses
what it must (missing factories, mismatched or pickled weights, two-input ONNX graphs, pickled archives)."""

import json
import math
import warnings
import zipfile

import httpx
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import foreign_models
from nnmark import data, keys, models, serve
from nnmark.errors import AccessError, DataError, ModelError
from nnmark.models import ModelCard, Normalized, load_any, parse_normalize, save_like
from nnmark.models.card import PRESETS
from nnmark.oracles import model_oracle
from nnmark.oracles.onnx import export as onnx_export

pytest.importorskip("onnxruntime")

FACTORY = "foreign_models:small_gn_net"
SHAPE = foreign_models.INPUT_SHAPE
NORMALIZE = ",".join(map(str, foreign_models.MEAN_STD[0] + foreign_models.MEAN_STD[1]))
ONNX_ATOL = 1e-4  # ONNX Runtime's float32 kernels vs eager: logits agree to this (documented in the README)


def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg and msg
    return msg


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The foreign model (seeded, eval) and the same weights as safetensors, TorchScript, torch.export and ONNX."""
    d = tmp_path_factory.mktemp("foreign")
    torch.manual_seed(0)
    net = foreign_models.small_gn_net().eval()
    save_file(net.state_dict(), d / "w.safetensors")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(net), d / "net.pt")
    program = torch.export.export(net, (torch.zeros(2, *SHAPE),), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, d / "net.pt2")
    (d / "net.onnx").write_bytes(onnx_export(net, SHAPE))
    return net, d


def _load(kind: str, d, **kw) -> models.LoadedModel:
    if kind == "factory":
        return load_any(FACTORY, weights=d / "w.safetensors", input_shape=SHAPE, normalize=NORMALIZE, **kw)
    extra = {"input_shape": SHAPE} if kind == "torchscript" else {}  # TorchScript says nothing of its input
    return load_any(str(d / {"torchscript": "net.pt", "export": "net.pt2", "onnx": "net.onnx"}[kind]),
                    normalize=NORMALIZE, **extra, **kw)


@pytest.mark.parametrize("kind", ["factory", "torchscript", "export", "onnx"])
def test_each_kind_loads_with_its_card_and_gives_the_eager_labels(files, kind):
    net, d = files
    loaded = _load(kind, d)
    assert loaded.kind == kind
    assert loaded.card == ModelCard(SHAPE, foreign_models.NUM_CLASSES, normalize=foreign_models.MEAN_STD)
    x = torch.rand(32, *SHAPE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        eager = Normalized(net, foreign_models.MEAN_STD)(x)
    oracle = model_oracle(loaded)
    p = oracle.probabilities(x)
    _, g = oracle.gradient(lambda p: p[:, 0], x[:4])
    xg = x[:4].clone().requires_grad_(True)
    (want,) = torch.autograd.grad(torch.softmax(Normalized(net, foreign_models.MEAN_STD)(xg), 1)[:, 0].sum(), xg)
    if kind == "onnx":  # the graph runs with torch operators: ONNX's decomposed GroupNorm and GELU, ~1e-7 apart
        assert loaded.note == "" and oracle.can("gradients")
        assert torch.allclose(loaded.model(x), eager, atol=ONNX_ATOL, rtol=0)
        top2 = eager.topk(2).values
        clear = top2[:, 0] - top2[:, 1] > 2 * ONNX_ATOL  # labels agree wherever the margin exceeds the tolerance
        assert clear.sum() >= 28
        assert torch.equal(oracle.labels(x)[clear], eager.argmax(1)[clear])
        assert torch.allclose(g, want, atol=1e-5)
        with pytest.raises(ModelError, match="cannot be traced"), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.jit.trace(loaded.model, x[:1])  # a trace would fix the batch size
    else:
        assert torch.equal(p, torch.softmax(eager, 1))
        assert torch.equal(oracle.labels(x), eager.argmax(1))
        assert loaded.digest == models.digest(net)  # the same state dict, whatever the container
        assert torch.allclose(g, want, atol=1e-7)


@pytest.mark.parametrize("arch", ["lenet5", "resnet20", "vgg11"])
def test_zoo_architectures_exported_to_onnx_run_in_torch(arch, tmp_path):
    torch.manual_seed(0)
    model = models.build(arch, (3, 16, 16), 10, width=0.5).eval()
    (tmp_path / "m.onnx").write_bytes(onnx_export(model, (3, 16, 16)))
    loaded = load_any(str(tmp_path / "m.onnx"))
    assert loaded.gradients and loaded.card == ModelCard((3, 16, 16), 10)
    x = torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    with torch.no_grad():  # the initializers are buffers, so the graph runs in float64 as a whole
        assert torch.allclose(loaded.model.double()(x), model.double()(x), atol=1e-6)


class _CumulativeHead(torch.nn.Module):
    """A graph with an operator (CumSum) that nnmark's ONNX-to-torch converter does not run."""

    def __init__(self):
        super().__init__()
        self.net = foreign_models.small_gn_net()

    def forward(self, x):
        return self.net(x).cumsum(1)


def test_an_onnx_graph_that_does_not_convert_runs_in_onnx_runtime_with_probabilities_only(tmp_path):
    torch.manual_seed(0)
    model = _CumulativeHead().eval()
    (tmp_path / "cum.onnx").write_bytes(onnx_export(model, SHAPE))
    loaded = load_any(str(tmp_path / "cum.onnx"))
    assert loaded.access == "probabilities" and "CumSum" in loaded.note and "\n" not in loaded.note
    oracle = model_oracle(loaded)
    x = torch.rand(8, *SHAPE, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert torch.allclose(loaded.model(x), model(x), atol=ONNX_ATOL)
    with pytest.raises(AccessError):
        oracle.gradient(lambda p: p[:, 0], x)
    with pytest.raises(ModelError) as e:
        loaded.require("gradients", "mark dbi")
    assert "CumSum" in _one_line(e) and "probabilities only" in str(e.value)


def test_the_normalisation_is_part_of_the_model_the_oracle_sees(files):
    net, d = files
    raw = load_any(FACTORY, weights=d / "w.safetensors", input_shape=SHAPE)
    normed = _load("factory", d)
    x = torch.rand(8, *SHAPE, generator=torch.Generator().manual_seed(2))
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in foreign_models.MEAN_STD)
    with torch.no_grad():
        assert torch.equal(normed.model(x), net((x - mean) / std))
        assert not torch.equal(raw.model(x), normed.model(x))
    assert normed.model.state_dict().keys() == {f"model.{k}" for k in net.state_dict()}  # mean/std not persisted


def test_checkpoint_kind_loads_and_has_a_factory_for_the_same_architecture(tmp_path):
    torch.manual_seed(0)
    model = models.build("lenet5", (1, 28, 28), 10)
    config = models.ModelConfig("lenet5", (1, 28, 28), 10)
    models.save(model, config, tmp_path / "m.safetensors")
    loaded = load_any(str(tmp_path / "m.safetensors"))
    assert (loaded.kind, loaded.card, loaded.config) == ("checkpoint", ModelCard((1, 28, 28), 10), config)
    assert loaded.access == "gradients" and loaded.digest == models.digest(model)
    fresh = loaded.factory()
    assert fresh.state_dict().keys() == model.state_dict().keys() and models.digest(fresh) != loaded.digest
    noisy = models.build("lenet5", (1, 28, 28), 10)
    save_like(loaded, noisy, tmp_path / "out.safetensors")
    assert models.load(tmp_path / "out.safetensors")[1] == config


def _perturbed(model: torch.nn.Module) -> torch.nn.Module:
    with torch.no_grad():
        next(model.parameters()).add_(0.01)
    return model


@pytest.mark.filterwarnings("ignore:`isinstance\\(treespec, LeafSpec\\)`:FutureWarning")
@pytest.mark.parametrize("kind,suffix", [("factory", "safetensors"), ("torchscript", "pt"), ("export", "pt2")])
def test_save_like_keeps_the_kind_and_the_card(files, tmp_path, kind, suffix):
    _, d = files
    loaded = _load(kind, d)
    import copy

    changed = _perturbed(copy.deepcopy(loaded.model))
    out = tmp_path / f"changed.{suffix}"
    save_like(loaded, changed, out)
    again = load_any(FACTORY, weights=out) if kind == "factory" else load_any(str(out))  # card read from the file
    assert again.kind == kind and again.card == loaded.card
    assert again.digest != loaded.digest
    x = torch.rand(4, *SHAPE, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.allclose(again.model(x), changed(x), atol=1e-6)


def test_factory_gives_fresh_models_of_the_same_architecture(files):
    _, d = files
    loaded = _load("factory", d)
    fresh = loaded.factory()
    assert isinstance(fresh, foreign_models.SmallGNNet) and models.digest(fresh) != loaded.digest


def test_kinds_that_cannot_do_something_say_so_in_one_line(files, tmp_path):
    _, d = files
    onnx = _load("onnx", d)
    with pytest.raises(ModelError) as e:
        save_like(onnx, onnx.model, tmp_path / "x.onnx")
    assert "onnx" in _one_line(e)
    with pytest.raises(ModelError) as e:
        _load("export", d).require("training", "attack finetune")
    assert "cannot be trained" in _one_line(e)
    with pytest.raises(ModelError) as e:
        _load("torchscript", d).require("training", "attack finetune")
    assert "non-leaf" in _one_line(e)
    exported = _load("export", d).module
    assert exported.eval() is exported  # a no-op: the graph is already in eval mode
    with pytest.raises(ModelError):
        exported.train()
    with pytest.raises(ModelError) as e:
        save_like(_load("torchscript", d), foreign_models.small_gn_net(), tmp_path / "x.pt")
    assert "no longer a TorchScript module" in _one_line(e)


def test_a_factory_that_does_not_exist(files):
    with pytest.raises(ModelError) as e:
        load_any("foreign_models:no_such_factory", input_shape=SHAPE)
    assert "no factory function 'no_such_factory'" in _one_line(e)
    with pytest.raises(ModelError) as e:
        load_any("no_such_package.nets:net", input_shape=SHAPE)
    assert "cannot import no_such_package.nets" in _one_line(e)


def test_weights_that_do_not_match_the_factory(files, tmp_path):
    _, d = files
    narrow = foreign_models.SmallGNNet(width=4).state_dict()
    save_file(narrow, tmp_path / "narrow.safetensors")
    with pytest.raises(ModelError) as e:
        load_any(FACTORY, weights=tmp_path / "narrow.safetensors", input_shape=SHAPE)
    assert "do not match foreign_models:small_gn_net" in _one_line(e) and "features.0.weight" in str(e.value)
    partial = foreign_models.small_gn_net().state_dict()
    del partial["head.bias"]
    partial["extra"] = torch.zeros(1)
    save_file(partial, tmp_path / "partial.safetensors")
    with pytest.raises(ModelError) as e:
        load_any(FACTORY, weights=tmp_path / "partial.safetensors", input_shape=SHAPE)
    assert "missing head.bias" in _one_line(e) and "unexpected extra" in str(e.value)


class _Boom:
    def __reduce__(self):
        return (exec, ("raise SystemExit('unpickled')",))


def test_a_pickle_is_never_unpickled_as_weights_or_as_an_archive(files, tmp_path):
    net, _ = files
    torch.save(net.state_dict(), tmp_path / "state.pt")  # a torch.save zip of pickles
    with pytest.raises(ModelError) as e:
        load_any(FACTORY, weights=tmp_path / "state.pt", input_shape=SHAPE)
    assert "never unpickles" in _one_line(e)
    import pickle

    (tmp_path / "boom.pt").write_bytes(pickle.dumps(_Boom()))
    with pytest.raises(ModelError) as e:
        load_any(FACTORY, weights=tmp_path / "boom.pt", input_shape=SHAPE)
    assert "a pickle" in _one_line(e)
    with pytest.raises(ModelError) as e:
        load_any(str(tmp_path / "boom.pt"), input_shape=SHAPE)
    assert "a pickle, not a TorchScript archive" in _one_line(e)
    with pytest.raises(ModelError) as e:
        load_any(str(tmp_path / "state.pt"), input_shape=SHAPE)
    assert "without TorchScript code" in _one_line(e)


def test_an_export_archive_with_pickled_payloads_is_refused(files, tmp_path):
    _, d = files
    src = zipfile.ZipFile(d / "net.pt2")
    with zipfile.ZipFile(tmp_path / "pickled.pt2", "w") as out:
        for name in src.namelist():
            body = src.read(name)
            if name.endswith("_weights_config.json"):
                config = json.loads(body)
                next(iter(config["config"].values()))["use_pickle"] = True
                body = json.dumps(config).encode()
            out.writestr(name, body)
    with pytest.raises(ModelError) as e:
        load_any(str(tmp_path / "pickled.pt2"))
    assert "pickled payloads" in _one_line(e)


def test_an_onnx_file_with_two_inputs(tmp_path):
    model = foreign_models.two_input_net().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(1, *SHAPE), torch.ones(1, 1)), tmp_path / "two.onnx", dynamo=False,
                          input_names=["image", "scale"])
    with pytest.raises(ModelError) as e:
        load_any(str(tmp_path / "two.onnx"))
    assert "2 inputs (image, scale)" in _one_line(e)


def test_missing_shape_wrong_outputs_and_unknown_files(files, tmp_path):
    _, d = files
    with pytest.raises(ModelError) as e:
        load_any(str(d / "net.pt"))
    assert "--input-shape" in _one_line(e)
    with pytest.raises(ModelError) as e:
        load_any(FACTORY, input_shape=(1, 28, 28))
    assert "fails on a zero batch of shape (1, 1, 28, 28)" in _one_line(e)
    (tmp_path / "model.bin").write_bytes(b"x")
    with pytest.raises(ModelError) as e:
        load_any(str(tmp_path / "model.bin"))
    assert "suffix" in _one_line(e)
    with pytest.raises(ModelError) as e:
        load_any(str(d / "net.pt2"), weights=d / "w.safetensors")
    assert "--weights goes with" in _one_line(e)


def test_model_card_round_trip_and_validation():
    card = ModelCard((3, 32, 32), 3, ("cat", "dog", "emu"), PRESETS["imagenet"])
    assert ModelCard.from_dict(json.loads(json.dumps(card.to_dict()))) == card
    bad = [
        {"input_shape": [3, 32], "num_classes": 10},
        {"input_shape": [3, 32, 99999], "num_classes": 10},
        {"input_shape": [1, 8, 8], "num_classes": 1},
        {"input_shape": [1, 8, 8], "num_classes": 2, "class_names": ["a"]},
        {"input_shape": [1, 8, 8], "num_classes": 2, "normalize": [[0.5], [0.0]]},
        {"input_shape": [1, 8, 8], "num_classes": 2, "normalize": [[math.nan], [1.0]]},
        {"input_shape": [1, 8, 8], "num_classes": 2, "normalize": [[0.5, 0.5], [1.0, 1.0]]},
        {"input_shape": [1, 8, 8], "num_classes": 2, "colour": "red"},
        [1, 8, 8],
    ]
    for d in bad:
        with pytest.raises(ModelError):
            ModelCard.from_dict(d)


def test_parse_normalize():
    assert parse_normalize("none", 3) is None
    assert parse_normalize("imagenet", 3) == PRESETS["imagenet"]
    assert parse_normalize("0.5,0.25", 3) == ((0.5,) * 3, (0.25,) * 3)
    assert parse_normalize("0.1,0.2,0.3,1,2,3", 3) == ((0.1, 0.2, 0.3), (1.0, 2.0, 3.0))
    for text, channels in [("imagenet", 1), ("0.1,0.2,0.3", 3), ("0.5,0", 1), ("a,b", 1)]:
        with pytest.raises(ModelError):
            parse_normalize(text, channels)


def _png(path, size, mode, seed):
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(path)


def test_a_mixed_folder_names_its_corrupt_file_then_loads_conformed(tmp_path):
    card = ModelCard(SHAPE, 2)
    for c, cls in enumerate(["ants", "bees"]):
        (tmp_path / cls).mkdir()
        for i, (size, mode) in enumerate([((20, 24), "L"), ((40, 36), "RGB"), ((32, 32), "L"), ((64, 48), "RGB")]):
            _png(tmp_path / cls / f"{i}.png", size, mode, seed=10 * c + i)
    (tmp_path / "bees" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(DataError) as e:
        data.load_for(f"folder:{tmp_path}", card)
    assert "broken.png" in _one_line(e)
    (tmp_path / "bees" / "broken.png").unlink()
    ds = data.load_for(f"folder:{tmp_path}", card)
    assert ds.shape == SHAPE and ds.num_classes == 2 and len(ds.train) + len(ds.test) == 8
    gray = Image.open(tmp_path / "ants" / "2.png")  # 32x32 gray: only its channels change, repeated
    x = torch.cat([ds.train.x, ds.test.x])
    expected = torch.from_numpy(np.asarray(gray, dtype=np.float32) / 255)
    assert any(torch.equal(img, expected.expand(3, -1, -1)) for img in x)
    with pytest.raises(DataError) as e:
        data.load_for(f"folder:{tmp_path}", ModelCard(SHAPE, 10))
    assert "2 classes but the model has 10" in _one_line(e)


def test_conform_converts_channels_and_size():
    digits = data.load("digits")
    card = ModelCard((3, 16, 16), 10)
    smooth = data.conform(digits, card, "bicubic")
    assert smooth.shape == (3, 16, 16) and torch.equal(smooth.train.y, digits.train.y)
    assert 0 <= smooth.train.x.min() and smooth.train.x.max() <= 1  # bicubic overshoot is clipped
    ds = data.conform(digits, card, "nearest")
    assert torch.equal(ds.train.x[:, 0], ds.train.x[:, 2])
    back = data.conform(ds, ModelCard((1, 8, 8), 10), "area")  # luma of gray is gray; 2x2 means undo 2x nearest
    assert torch.allclose(back.train.x, digits.train.x, atol=1e-6)
    rgb = torch.rand(2, 3, 4, 4)
    gray = data.convert_images(rgb, (1, 4, 4))
    assert torch.allclose(gray[:, 0], 0.299 * rgb[:, 0] + 0.587 * rgb[:, 1] + 0.114 * rgb[:, 2])
    with pytest.raises(DataError):
        data.conform(digits, card, "lanczos")
    with pytest.raises(DataError) as e:
        data.conform(digits, ModelCard((1, 8, 8), 3))
    assert "10 classes but the model has 3" in _one_line(e)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The foreign model trained briefly on digits (conformed to RGB 32x32), its weights and its other forms."""
    d = tmp_path_factory.mktemp("trained")
    card = ModelCard(SHAPE, foreign_models.NUM_CLASSES, normalize=foreign_models.MEAN_STD)
    ds = data.load_for("digits", card)
    torch.manual_seed(0)
    net = foreign_models.small_gn_net()
    models.train(Normalized(net, card.normalize), ds.train, epochs=3, lr=3e-3)
    assert models.accuracy(Normalized(net, card.normalize), ds.test) > 0.8
    save_file(net.state_dict(), d / "w.safetensors")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(net), d / "net.pt")
    torch.export.save(torch.export.export(net, (torch.zeros(2, *SHAPE),),
                                          dynamic_shapes=({0: torch.export.Dim("batch")},)), d / "net.pt2")
    (d / "net.onnx").write_bytes(onnx_export(net, SHAPE))
    return d


def _cli(*args):
    from click.testing import CliRunner

    from nnmark.cli import main

    return CliRunner().invoke(main, [str(a) for a in args], env={"NNMARK_SECRET": "a long test secret"})


def test_cli_marks_verifies_and_attacks_a_foreign_model(trained, tmp_path):
    source = ["--model", FACTORY, "--weights", trained / "w.safetensors", "--input-shape", "3,32,32",
              "--normalize", NORMALIZE]
    dbi_key, pairs_key = tmp_path / "dbi.key", tmp_path / "pairs.key"
    r = _cli("mark", "dbi", *source, "--data", "digits", "--n", 10, "--itr", 200, "--eps", 1e-3, "--out", dbi_key)
    assert r.exit_code == 0, r.output
    r = _cli("mark", "pairs", *source, "--n-pairs", 6, "--user-id", "alice", "--max-itr", 100, "--alpha", 1e-5,
             "--max-steps", 500, "--out", pairs_key)
    assert r.exit_code == 0, r.output
    card = keys.load(dbi_key, secret=b"a long test secret").config["model_card"]
    assert card == ModelCard(SHAPE, 10, normalize=foreign_models.MEAN_STD).to_dict()

    for key in (dbi_key, pairs_key):  # shape and normalisation come from the key's card
        r = _cli("verify", key, "--model", FACTORY, "--weights", trained / "w.safetensors", "--json")
        assert r.exit_code == 0, r.output
        assert json.loads(r.stdout)["model_digest_matches"] is True
    for form in ("net.pt", "net.pt2", "net.onnx"):  # the same weights in each container: the same verdict
        r = _cli("verify", dbi_key, "--model", trained / form, "--json")
        assert r.exit_code == 0, (form, r.output)
    loaded = load_any(FACTORY, weights=trained / "w.safetensors", input_shape=SHAPE, normalize=NORMALIZE)
    with serve.serving(serve.create_app(model_oracle(loaded), model_name="model",
                                        card={"model_card": loaded.card.to_dict()})) as url:
        assert httpx.get(f"{url}/v2/models/model").json()["parameters"]["model_card"] == card
        r = _cli("verify", dbi_key, "--endpoint", url, "--json")
    assert r.exit_code == 0, r.output

    tuned = tmp_path / "tuned.safetensors"
    r = _cli("attack", "finetune", *source, "--data", "digits", "--lr", 1e-3, "--steps", 20, "--out", tuned)
    assert r.exit_code == 0, r.output
    for key in (dbi_key, pairs_key):
        r = _cli("verify", key, "--model", FACTORY, "--weights", tuned, "--json")
        assert r.exit_code == 1, r.output
        assert json.loads(r.stdout)["decision"] == "tampered"

    r = _cli("mark", "dbi", "--model", trained / "net.pt2", "--normalize", NORMALIZE, "--data", "mnist5k", "--n", 5,
             "--itr", 50, "--eps", 1e-3, "--out", tmp_path / "x.key")  # 10 classes: converted to RGB 32x32, it works
    assert r.exit_code == 0, r.output
    r = _cli("attack", "finetune", "--model", trained / "net.pt2", "--data", "digits", "--out", tmp_path / "x.pt2")
    assert r.exit_code == 2 and "cannot be trained" in r.output
    r = _cli("attack", "prune", "--model", trained / "net.pt", "--input-shape", "3,32,32", "--fraction", 0.5,
             "--out", tmp_path / "x.pt")
    assert r.exit_code == 2 and "layers" in r.output
    r = _cli("verify", dbi_key, "--model", FACTORY, "--weights", trained / "net.pt")
    assert r.exit_code == 2 and "never unpickles" in r.output


def test_cli_trains_a_factory_and_its_weights_load_with_the_card_alone(tmp_path):
    out = tmp_path / "net.safetensors"
    r = _cli("train", "--model", FACTORY, "--input-shape", "3,32,32", "--normalize", NORMALIZE, "--data", "digits",
             "--epochs", 2, "--lr", 3e-3, "--out", out, "--json")
    assert r.exit_code == 0, r.output
    row = json.loads(r.stdout)
    assert row["model"] == FACTORY and row["test_accuracy"] > 0.5
    loaded = load_any(FACTORY, weights=out)  # shape and normalisation from the card written with the weights
    assert loaded.card == ModelCard(SHAPE, 10, normalize=foreign_models.MEAN_STD)
    assert models.accuracy(loaded.model, data.load_for("digits", loaded).test) == pytest.approx(row["test_accuracy"])

    for args, words in [((), "either --arch"), (("--arch", "lenet5", "--model", FACTORY), "either --arch"),
                        (("--model", FACTORY, "--weights", out), "drop --weights"),
                        (("--model", "foreign_models:nope", "--input-shape", "3,32,32"), "no factory function")]:
        r = _cli("train", *args, "--data", "digits", "--out", tmp_path / "x.safetensors")
        assert r.exit_code == 2 and words in r.output and "Traceback" not in r.output, r.output
    assert not (tmp_path / "x.safetensors").exists()


def test_bench_sources_quick_times_every_kind_on_the_same_weights(tmp_path):
    r = _cli("bench", "sources", "--quick", "--out-dir", tmp_path)
    assert r.exit_code == 0, r.output
    rows = {row["kind"]: row for row in json.loads((tmp_path / "sources.json").read_text())["rows"]}
    assert len(rows) == 5 and all(len(row["load_s"]) == 2 and len(row["forward_s"]) == 2 for row in rows.values())
    assert rows["ONNX Runtime"]["gradient_s"] == [] and len(rows["torch.export"]["gradient_s"]) == 2
    for kind, row in rows.items():
        assert row["labels_agree"] == 16 and row["max_abs_logit_diff"] < ONNX_ATOL, kind
    assert "| TorchScript |" in (tmp_path / "sources.md").read_text()
