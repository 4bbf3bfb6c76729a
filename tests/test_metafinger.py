"""MetaFinger (Yang et al.): eq. 2's signs, the screen, the null, and the headline in miniature on 8x8 digits, for a
zoo model and for a user's own (factory) model."""

import contextlib
import dataclasses
import math
import weakref

import pytest
import torch

import foreign_models
from nnmark import data, keys, models
from nnmark.attacks import finetune_mode
from nnmark.data.roles import attacker_data
from nnmark.errors import ArgumentError, InputError, KeyFileError, NnmarkError
from nnmark.marks.ownership import metafinger, shadow
from nnmark.marks.ownership.stats import binomial_tail
from nnmark.oracles import LabelsOracle, TorchOracle
from nnmark.marks.ownership.metafinger import Pools, Settings
from nnmark.marks.ownership.shadow import PoolLayout, ShadowSpec, build_pool, pool_specs

ALPHA = 3.0  # eq. 1 strength of the DNN augmentation
SETTINGS = Settings(n=40, candidates=80, epochs=30)
FACTORY = "foreign_models:small_gn_net"  # tests/ is on sys.path (rootdir conftest), as a user's folder would be


# --- eq. 2 -------------------------------------------------------------------------------------------


def test_kl_divergence_matches_definition():
    p = torch.tensor([[0.7, 0.2, 0.1], [1.0, 0.0, 0.0]])
    q = torch.tensor([[0.1, 0.2, 0.7], [0.5, 0.25, 0.25]])
    want = torch.tensor([0.7 * math.log(7) + 0.1 * math.log(1 / 7), math.log(2)])
    assert torch.allclose(metafinger.kl_divergence(p, q), want, atol=1e-6)
    assert torch.allclose(metafinger.kl_divergence(p, p), torch.zeros(2), atol=1e-7)


def test_meta_loss_pulls_positives_together_and_pushes_negatives_apart():
    anchor = torch.tensor([[0.8, 0.1, 0.1]])
    near, far = torch.tensor([[[0.7, 0.2, 0.1]]]), torch.tensor([[[0.1, 0.1, 0.8]]])
    # a positive moving toward the anchor lowers the loss
    assert metafinger.meta_loss(anchor, near, far, 1.0) < metafinger.meta_loss(anchor, far, far, 1.0)
    # a negative moving away from the anchor lowers the loss
    assert metafinger.meta_loss(anchor, near, far, 1.0) < metafinger.meta_loss(anchor, near, near, 1.0)
    # lambda weights the negative term; agreement everywhere with lambda 0 costs nothing
    assert metafinger.meta_loss(anchor, anchor[None], far, 0.0).item() == pytest.approx(0.0, abs=1e-7)
    two = torch.cat([near, far])  # means over the k models, one value per sample
    loss = metafinger.meta_loss(anchor, two, two, 0.5)
    kl = metafinger.kl_divergence(anchor, two).mean()
    assert loss.shape == (1,) and loss.item() == pytest.approx(0.5 * kl.item(), rel=1e-5)
    with pytest.raises(ValueError):
        metafinger.meta_loss(anchor, near[0], far, 1.0)


def test_a_gradient_step_on_eq2_moves_positives_toward_the_anchor():
    torch.manual_seed(0)
    nets = [torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3)) for _ in range(3)]
    x = torch.rand(8, 1, 2, 2, requires_grad=True)

    def parts(x):
        p = [torch.softmax(n(x), dim=1) for n in nets]
        return p[0], p[1][None], p[2][None]

    a, pos, neg = parts(x)
    loss = metafinger.meta_loss(a, pos, neg, 1.0).sum()
    (g,) = torch.autograd.grad(loss, x)
    a2, pos2, neg2 = parts(x.detach() - 0.05 * g)
    assert metafinger.kl_divergence(a2, pos2[0]).sum() < metafinger.kl_divergence(a, pos[0]).sum()
    assert metafinger.kl_divergence(a2, neg2[0]).sum() > metafinger.kl_divergence(a, neg[0]).sum()


# --- input augmentation during meta-training ------------------------------------------------------------


def test_augment_is_deterministic_by_generator_and_keeps_shape_and_range():
    x = torch.rand(6, 1, 12, 12)
    outs = [metafinger.augment(x, torch.Generator().manual_seed(s)) for s in (3, 3, 4)]
    assert torch.equal(outs[0], outs[1])
    gen = torch.Generator().manual_seed(0)
    draws = [metafinger.augment(x, gen) for _ in range(40)]
    for y in [*outs, *draws]:
        assert y.shape == x.shape and y.dtype == x.dtype and y.min() >= 0 and y.max() <= 1
    changed = [not torch.equal(y, x) for y in draws]
    assert any(changed) and not all(changed)  # the identity is one of the draws, the others move X
    assert len({y.sum().item() for y in draws}) > len(metafinger.AUGMENTATIONS) // 2  # several transforms drawn


@pytest.mark.parametrize("entry", metafinger.AUGMENTATIONS, ids=lambda e: e[0])
def test_augment_lets_the_gradient_reach_x(entry, monkeypatch):
    monkeypatch.setattr(metafinger, "AUGMENTATIONS", (entry,))
    x = torch.rand(4, 1, 12, 12).mul(0.8).add(0.1).requires_grad_(True)
    weight = torch.randn(4, 1, 12, 12, generator=torch.Generator().manual_seed(1))
    y = metafinger.augment(x, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and 0 <= y.min() and y.max() <= 1
    (grad,) = torch.autograd.grad((y * weight).sum(), x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert entry[0] == "identity" or not torch.equal(y.detach(), x.detach())


# --- screening, labels, null --------------------------------------------------------------------------


def test_screen_keeps_samples_all_positives_and_no_negatives_label_y():
    y = torch.tensor([1, 2, 3, 4])
    pos = torch.tensor([[1, 2, 3, 0], [1, 2, 0, 4]])
    neg = torch.tensor([[0, 2, 0, 0], [0, 0, 0, 0]])
    assert metafinger.screen_mask(y, pos, neg).tolist() == [True, False, False, False]
    assert metafinger.majority_labels(torch.tensor([[1, 2, 5], [1, 3, 6], [0, 3, 6]])).tolist() == [1, 3, 6]
    assert metafinger.majority_labels(torch.tensor([[4, 2], [3, 7]])).tolist() == [3, 2]  # ties: smallest label


def test_screen_on_models():
    torch.manual_seed(0)
    const = [torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3)) for _ in range(2)]
    with torch.no_grad():
        for net, label in zip(const, (2, 0)):
            net[1].weight.zero_()
            net[1].bias.copy_(torch.nn.functional.one_hot(torch.tensor(label), 3).float())
    x = torch.rand(5, 1, 2, 2)
    kept, y, mask = metafinger.screen(x, torch.tensor([2, 0, 2, 2, 1]), [const[0]], [const[1]])
    assert mask.tolist() == [True, False, True, True, False] and y.tolist() == [2, 2, 2] and len(kept) == 3


def test_null_accuracies_leave_each_negative_out():
    y = torch.tensor([1, 1, 1, 1])
    pos = torch.ones(1, 4, dtype=torch.long)
    neg = torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0]])
    # model 0 is scored on the screen of model 1 alone (samples 2, 3: no agreement),
    # model 1 on the screen of model 0 alone (samples 1-3: agrees on sample 1)
    assert metafinger.null_accuracies(y, pos, neg) == pytest.approx([0.0, 1 / 3])
    neg = torch.tensor([[0, 1, 0, 0], [0, 0, 1, 0]])
    assert metafinger.null_accuracies(y, pos, neg) == pytest.approx([1 / 3, 1 / 3])


def test_binomial_tail_is_exact():
    def direct(k, n, p):
        return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1))

    for k, n, p in [(0, 5, 0.3), (3, 5, 0.3), (5, 5, 0.1), (20, 40, 0.1), (1, 1, 0.0)]:
        assert binomial_tail(k, n, p) == pytest.approx(direct(k, n, p), rel=1e-9, abs=1e-300)
    assert binomial_tail(100, 100, 0.1) == pytest.approx(1e-100, rel=1e-9)
    for bad in [(3, 2, 0.5), (1, 2, 1.5), (1.0, 2, 0.5), (1, -1, 0.5)]:
        with pytest.raises(ValueError):
            binomial_tail(*bad)


@pytest.mark.parametrize("changes", [{"n": 0}, {"candidates": 0}, {"epochs": 0}, {"k": 0}, {"lr": 0.0},
                                     {"lam": -1.0}, {"threshold": 1.5}, {"max_p_value": 0.0}], ids=str)
def test_settings_refuse_values_outside_their_range(changes):
    with pytest.raises(ArgumentError, match=next(iter(changes))):
        Settings(**changes)
    assert Settings().starts == 2 * metafinger.DEFAULT_N and Settings(candidates=7).starts == 7


# --- the headline in miniature --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Source, shadow pools and suspects on 8x8 digits (LeNet-5, ~92% test accuracy, ~2 s each)."""
    ds = data.load("digits")
    cache = tmp_path_factory.mktemp("shadow")
    source = build_pool([ShadowSpec("lenet5", "digits", 0)], cache_dir=cache, executor="serial")[0]
    digest = models.digest(source)
    specs = pool_specs("lenet5", "digits", digest, PoolLayout(negatives=2, val_negatives=2, af=2, alpha=ALPHA))
    independent = ShadowSpec("lenet5", "digits", 7)
    wanted = [s for group in specs.values() for s in group]
    pool = build_pool([*wanted, independent], cache_dir=cache, base=source, executor="serial")
    pools = Pools(**pool.groups(specs))
    key = metafinger.create(source, pools, ds.train.x, SETTINGS, seed=0,
                            model_digest=digest, meta={"data": "digits"})
    att = attacker_data(ds)
    suspects = {
        "source": source,
        "FTAL": finetune_mode(source, att.x, att.y, mode="FTAL", seed=1),
        "independent": pool.select([independent])[0],
    }
    return ds, source, pools, key, suspects


def _verify(model, key, shape):
    return metafinger.verify(LabelsOracle(TorchOracle(model, shape)), key)


def test_key_records_the_method_and_its_calibration(world):
    ds, source, _, key, _ = world
    c = key.config
    assert key.method == "metafinger" and 10 <= len(key.expected) <= 40 and c["kept"] == len(key.expected)
    assert key.queries.shape[1:] == ds.shape and key.queries.min() >= 0 and key.queries.max() <= 1
    assert key.extras["sources"].shape == key.queries.shape
    assert not torch.equal(key.queries, key.extras["sources"])  # meta-training moved the images
    assert c["pools"] == {"positives_train": 2, "negatives_train": 6, "positives_val": 2, "negatives_val": 2}
    assert (c["k"], c["lam"], c["lr"], c["epochs"], c["optimizer"], c["data"]) == (3, 1.0, 0.01, 30, "adam", "digits")
    assert c["augment_inputs"] is metafinger.DEFAULT_AUGMENT_INPUTS
    assert len(c["null_accuracies"]) == 2 and c["p0"] == max(sum(c["null_accuracies"]) / 2, 0.1)
    # the kept X is the epoch with the lowest validation ACC_neg, and it fell from the natural images' level
    history = [h["neg_accuracy"] for h in c["history"]]
    assert c["val_neg_accuracy"] == min(history) == history[c["best_epoch"]] < history[0] - 0.3
    assert torch.equal(TorchOracle(source, ds.shape).labels(key.queries), key.expected)


def test_verify_matches_the_source_and_a_finetuned_copy_but_not_an_independent_model(world):
    ds, _, _, key, suspects = world
    verdicts = {name: _verify(m, key, ds.shape) for name, m in suspects.items()}
    print({n: (v.decision, round(v.statistic, 3), v.details["p_value"]) for n, v in verdicts.items()})
    assert verdicts["source"].passed and verdicts["source"].statistic == 1.0
    assert verdicts["FTAL"].passed and verdicts["FTAL"].statistic >= 0.7
    assert verdicts["FTAL"].details["p_value"] < 1e-6
    assert not verdicts["independent"].passed and verdicts["independent"].statistic < 0.3
    assert verdicts["independent"].details["p_value"] > 1e-3
    for v in verdicts.values():
        assert v.statistic_name == "query_accuracy" and v.queries == len(key.expected)
        assert v.decision == ("match" if v.passed else "no match")
        assert len(v.flipped) == v.details["n"] - v.details["hits"]


def test_key_survives_signing_and_verifies_after_loading(world, tmp_path):
    ds, _, _, key, suspects = world
    keys.save(key, tmp_path / "mf.key", secret=b"s3cret")
    loaded = keys.load(tmp_path / "mf.key", secret=b"s3cret")
    assert loaded.config == key.config and torch.equal(loaded.queries, key.queries)
    assert _verify(suspects["FTAL"], loaded, ds.shape).passed


def test_create_is_deterministic_by_seed(world):
    ds, source, pools, key, _ = world
    again = metafinger.create(source, pools, ds.train.x, SETTINGS, seed=0,
                              model_digest=key.model_digest, meta={"data": "digits"})
    assert torch.equal(again.queries, key.queries) and torch.equal(again.expected, key.expected)


def test_decision_rule_thresholds_and_p_value(world):
    ds, _, _, key, suspects = world
    strict = keys.KeyFile(key.method, {**key.config, "max_p_value": 1e-300}, key.queries, key.expected)
    assert not _verify(suspects["source"], strict, ds.shape).passed  # p-value bound binds
    lax = keys.KeyFile(key.method, {**key.config, "threshold": 0.0, "p0": 1.0}, key.queries, key.expected)
    v = _verify(suspects["independent"], lax, ds.shape)
    assert v.details["p_value"] == 1.0 and not v.passed


def test_bad_inputs_raise_clear_errors(world):
    ds, source, pools, key, _ = world
    bad = ds.train.x[:20].clone()
    bad[0, 0, 0, 0] = 2.0
    with pytest.raises(InputError):
        metafinger.create(source, pools, bad, Settings(n=metafinger.MIN_KEPT))
    with pytest.raises(InputError):
        metafinger.create(source, pools, ds.train.x[0], Settings(n=metafinger.MIN_KEPT))
    with pytest.raises(InputError):
        metafinger.meta_train(source, pools, torch.full((2, 1, 8, 8), float("nan")), Settings(epochs=1))
    with pytest.raises(ValueError):
        metafinger.create(source, pools, ds.train.x, Settings(n=metafinger.MIN_KEPT, candidates=10**6))
    with pytest.raises(ValueError):
        Pools(pools.positives_train, [], pools.positives_val, pools.negatives_val)
    with pytest.raises(NnmarkError, match="screen"):  # the source as its own negative: nothing can pass
        metafinger.create(source, dataclasses.replace(pools, negatives_val=[source]), ds.train.x,
                          Settings(n=metafinger.MIN_KEPT, epochs=1))
    with pytest.raises(KeyFileError):
        metafinger.verify(LabelsOracle(TorchOracle(source, ds.shape)),
                          keys.KeyFile("dbi", key.config, key.queries, key.expected))
    no_null = {k: v for k, v in key.config.items() if k != "p0"}
    with pytest.raises(KeyFileError):
        metafinger.verify(LabelsOracle(TorchOracle(source, ds.shape)),
                          keys.KeyFile(key.method, no_null, key.queries, key.expected))


# --- micro-batches ---------------------------------------------------------------------------------------------


def test_meta_training_and_screening_forward_at_most_batch_size_samples(world, forward_sizes):
    ds, source, pools, _, _ = world
    settings = Settings(n=metafinger.MIN_KEPT, candidates=80, epochs=10, batch_size=6)
    every = [source, *pools.positives_train, *pools.negatives_train, *pools.positives_val, *pools.negatives_val]
    made = []
    sizes = [size for _, size in forward_sizes(every, lambda: made.append(metafinger.create(source, pools, ds.train.x,
                                                                                             settings)))]
    assert max(sizes) == 6 and 2 in sizes  # 80 candidates: 13 passes of 6 and one of 2 per model and step
    assert made[0].config["batch_size"] == 6
    with pytest.raises(ArgumentError, match="batch_size"):
        Settings(batch_size=0)


def test_step_gradient_in_micro_batches_is_the_whole_batch_gradient(world):
    ds, source, pools, _, _ = world
    anchor, pos, neg = source, list(pools.positives_train[:2]), list(pools.negatives_train[:2])
    x = ds.train.x[:23].clone().requires_grad_(True)
    xs = metafinger.augment(x, torch.Generator().manual_seed(2))  # a non-identity draw: the gradient goes through it
    assert not torch.equal(xs, x)
    whole = metafinger.meta_loss(torch.softmax(anchor(xs), 1), torch.stack([torch.softmax(m(xs), 1) for m in pos]),
                                 torch.stack([torch.softmax(m(xs), 1) for m in neg]), 0.7).sum()
    (want,) = torch.autograd.grad(whole, x, retain_graph=True)
    for batch_size in (23, 5, 1):
        grad_xs, total = metafinger.step_gradient(anchor, pos, neg, xs, 0.7, batch_size)
        (grad,) = torch.autograd.grad(xs, x, grad_outputs=grad_xs, retain_graph=True)
        assert total == pytest.approx(whole.item(), rel=1e-5)
        assert torch.allclose(grad, want, rtol=1e-4, atol=1e-6), batch_size


class _Saved:
    """A tensor saved for backward, counted while its graph lives."""

    def __init__(self, tensor: torch.Tensor, live: dict) -> None:
        self.tensor, size = tensor, tensor.numel() * tensor.element_size()
        live["now"] += size
        live["peak"] = max(live["peak"], live["now"])
        weakref.finalize(self, _release, live, size)


def _release(live: dict, size: int) -> None:
    live["now"] -= size


@contextlib.contextmanager
def _saved_bytes():
    """The peak bytes autograd holds for backward inside the block (``saved_tensors_hooks``)."""
    live = {"now": 0, "peak": 0}
    with torch.autograd.graph.saved_tensors_hooks(lambda t: _Saved(t, live), lambda box: box.tensor):
        yield live


def test_a_meta_training_step_holds_one_models_graph_at_a_time(world):
    """Peak memory follows one model's micro-batch, not the 2k + 1 models of a step: the bytes saved for backward
    peak at most a little above one model's input gradient on the same micro-batch (here 1 + 2 + 2 models)."""
    ds, source, pools, _, _ = world
    pos, neg = list(pools.positives_train[:2]), list(pools.negatives_train[:2])
    x = ds.train.x[:16]
    with _saved_bytes() as one:
        c = x.clone().requires_grad_(True)
        torch.autograd.grad(torch.softmax(source(c), dim=1).sum(), c)
    with _saved_bytes() as step:
        metafinger.step_gradient(source, pos, neg, x, 0.7, 16)
    assert 0 < one["peak"] <= step["peak"] < 1.5 * one["peak"]


def test_a_key_made_in_micro_batches_is_the_one_batch_key(world):
    """Tolerance: queries within 1e-5 (float summation order; on x86 CPUs they come out bit-identical), the same labels,
    the same kept epoch and calibration."""
    ds, source, pools, _, _ = world
    made = {b: metafinger.create(source, pools, ds.train.x, dataclasses.replace(SETTINGS, epochs=10, batch_size=b))
            for b in (len(ds.train.x), 7)}
    one, micro = made[len(ds.train.x)], made[7]
    assert micro.config["batch_size"] == 7
    assert torch.equal(micro.expected, one.expected) and torch.equal(micro.extras["sources"], one.extras["sources"])
    assert torch.allclose(micro.queries, one.queries, rtol=0, atol=1e-5)
    for field in ("best_epoch", "screened", "kept", "null_accuracies", "p0"):
        assert micro.config[field] == one.config[field], field
    assert [h["loss"] for h in micro.config["history"]] == pytest.approx([h["loss"] for h in one.config["history"]],
                                                                          rel=1e-5)


def test_mark_metafinger_takes_batch_size():
    from click.testing import CliRunner

    from nnmark.cli import main

    r = CliRunner().invoke(main, ["mark", "metafinger", "--help"])
    assert r.exit_code == 0 and "--batch-size" in r.output


# --- the user's own model ------------------------------------------------------------------------------------


def test_a_factory_model_gets_a_fingerprint_that_matches_it_and_not_an_independent_model(tmp_path):
    """RGB 32x32, normalised, not in the zoo: shadow pools from its factory on digits converted for it, a key,
    MATCH on the model and its fine-tuned copy, NO MATCH on a model the same factory trained independently."""
    normalize = ",".join(map(str, foreign_models.MEAN_STD[0] + foreign_models.MEAN_STD[1]))
    fresh = models.load_any(FACTORY, input_shape=foreign_models.INPUT_SHAPE, normalize=normalize)
    card, cache = fresh.card, tmp_path / "shadow"
    trained = shadow.train_shadow(ShadowSpec(FACTORY, "digits", 0, epochs=2, card=card))
    models.save_like(fresh, trained, tmp_path / "w.safetensors")
    source = models.load_any(FACTORY, weights=tmp_path / "w.safetensors")  # the card comes with the weights
    ds = data.load_for("digits", source.card)

    layout = PoolLayout(negatives=1, val_negatives=1, af=1, alpha=ALPHA, epochs=1, finetune_epochs=1)
    specs = shadow.pool_specs_for(source, "digits", layout)
    independent = ShadowSpec(FACTORY, "digits", 7, epochs=2, card=card)
    pool = build_pool([*(s for group in specs.values() for s in group), independent], cache_dir=cache,
                      base=source.model, executor="serial")
    key = metafinger.create(source.model, Pools(**pool.groups(specs)), ds.train.x, Settings(n=20, candidates=60,
                            epochs=10), seed=0, model_digest=source.digest)
    assert key.queries.shape[1:] == card.input_shape and 0 <= key.queries.min() and key.queries.max() <= 1

    att = attacker_data(ds)
    suspects = {"source": source.model, "FTAL": finetune_mode(source.model, att.x, att.y, mode="FTAL", seed=1),
                "independent": pool.select([independent])[0]}
    verdicts = {name: metafinger.verify(LabelsOracle(TorchOracle(m, card.input_shape)), key)
                for name, m in suspects.items()}
    print({n: (v.decision, round(v.statistic, 3), v.details["p_value"]) for n, v in verdicts.items()})
    assert verdicts["source"].passed and verdicts["source"].statistic == 1.0
    assert verdicts["FTAL"].passed
    assert not verdicts["independent"].passed
    cached = models.load_any(FACTORY, weights=pool.paths[-1])  # the pool's files load as the user's own model
    assert torch.equal(TorchOracle(cached.model, card.input_shape).labels(key.queries),
                       TorchOracle(suspects["independent"], card.input_shape).labels(key.queries))


# --- thief-aware pools ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def thief_world(tmp_path_factory):
    """A thief-aware key on 8x8 digits: one RTAL, prune, noise, distilled and extracted copy of the source as positive
    train models; and suspects the pools never saw."""
    ds = data.load("digits")
    cache = tmp_path_factory.mktemp("shadow")
    source = build_pool([ShadowSpec("lenet5", "digits", 0)], cache_dir=cache, executor="serial")[0]
    layout = PoolLayout(negatives=2, val_negatives=2, af=2, alpha=ALPHA).thief_aware()
    specs = pool_specs("lenet5", "digits", models.digest(source), layout)
    independent = ShadowSpec("lenet5", "digits", 7)
    # an independent thief's copy (its student seeded apart from the source's: a student of seed s starts from the
    # initial weights of the from-scratch model of seed s)
    distilled = ShadowSpec("lenet5", "digits", 8, augment_seed=99, variant="distill")
    pool = build_pool([*(s for group in specs.values() for s in group), independent, distilled], cache_dir=cache,
                      base=source, executor="serial")
    key = metafinger.create(source, Pools(**pool.groups(specs)), ds.train.x, SETTINGS, seed=0)
    att = attacker_data(ds)
    suspects = {"source": source, "RTAL": finetune_mode(source, att.x, att.y, mode="RTAL", seed=1),
                "independent": pool.select([independent])[0], "distilled independent": pool.select([distilled])[0]}
    return ds, key, suspects


def test_a_thief_aware_key_matches_the_source_and_its_thief_but_no_independent_model(thief_world):
    ds, key, suspects = thief_world
    pools = key.config["pools"]
    assert pools["positives_train"] == 1 + 1 + len(shadow.THIEF_POSITIVES)  # source, eq. 1 copy, one of each
    assert pools["positives_val"] == 1 + 1  # source, eq. 1 copy: the variants only train
    assert pools["negatives_val"] == 2
    verdicts = {name: _verify(m, key, ds.shape) for name, m in suspects.items()}
    print({n: (v.decision, round(v.statistic, 3), v.details["p_value"]) for n, v in verdicts.items()})
    assert verdicts["source"].passed and verdicts["source"].statistic == 1.0
    assert verdicts["RTAL"].passed and verdicts["RTAL"].details["p_value"] < 1e-6
    assert not verdicts["independent"].passed and verdicts["independent"].details["p_value"] > 1e-3
    # a distilled independent model agrees with the source more than the null p0 (its p-value can be small): the
    # threshold on the query accuracy is what keeps it out, as the rule says (MATCH needs both)
    distilled = verdicts["distilled independent"]
    assert not distilled.passed and distilled.statistic < key.config["threshold"]


def test_mark_metafinger_pool_thief_wide_adds_students_of_the_other_families_and_refuses_a_card(tmp_path):
    from click.testing import CliRunner

    from nnmark.cli import main

    source = ShadowSpec("lenet5", "digits", 0, epochs=4)
    model = build_pool([source], cache_dir=tmp_path / "cache", executor="serial")[0]
    models.save(model, models.ModelConfig("lenet5", (1, 8, 8), 10, data="digits", seed=0), tmp_path / "m.safetensors")
    args = ["mark", "metafinger", "--unsigned", "--n", "20", "--negatives", "1", "--val-negatives", "2", "--af", "0",
            "--shadow-epochs", "2", "--finetune-epochs", "1", "--epochs", "5", "--cache-dir", str(tmp_path / "cache"),
            "--executor", "serial", "--pool", "thief-wide", "--out", str(tmp_path / "k.key")]
    r = CliRunner().invoke(main, [*args, "--model", str(tmp_path / "m.safetensors")])
    assert r.exit_code == 0, r.output
    key = keys.load(tmp_path / "k.key", secret=None, allow_unsigned=True)
    assert key.config["pool"] == "thief-wide" and key.config["pools"]["positives_val"] == 1
    assert key.config["pools"]["positives_train"] == 1 + len(shadow.THIEF_POSITIVES) + 5
    layout = PoolLayout(negatives=1, val_negatives=2, af=0, epochs=2, finetune_epochs=1).thief_wide("lenet5")
    wanted = [s for g in pool_specs("lenet5", "digits", models.digest(model), layout).values() for s in g]
    assert {s.model_arch for s in wanted if (tmp_path / "cache" / s.cache_name()).exists()} == set(
        shadow.WIDE_STUDENTS)
    r = CliRunner().invoke(main, [*args, "--model", str(tmp_path / "m.safetensors"), "--normalize", "0.5,0.5"])
    assert r.exit_code == 2 and "need a zoo checkpoint trained on the data without a normalisation" in r.output
    assert len(r.output.strip().splitlines()) == 1 and "Traceback" not in r.output


def test_mark_metafinger_pool_thief_builds_the_thief_aware_pools(tmp_path):
    import json

    from click.testing import CliRunner

    from nnmark.cli import main

    source = ShadowSpec("lenet5", "digits", 0, epochs=4)
    model = build_pool([source], cache_dir=tmp_path / "cache", executor="serial")[0]
    models.save(model, models.ModelConfig("lenet5", (1, 8, 8), 10, data="digits", seed=0), tmp_path / "m.safetensors")
    args = ["mark", "metafinger", "--model", str(tmp_path / "m.safetensors"), "--unsigned", "--n", "20",
            "--negatives", "1", "--val-negatives", "2", "--af", "0", "--shadow-epochs", "4", "--epochs", "20",
            "--cache-dir", str(tmp_path / "cache"), "--executor", "serial", "--out", str(tmp_path / "k.key")]
    r = CliRunner().invoke(main, [*args, "--pool", "thief", "--json"])
    assert r.exit_code == 0, r.output
    key = keys.load(tmp_path / "k.key", secret=None, allow_unsigned=True)
    assert key.config["pool"] == "thief" and key.config["pools"]["positives_val"] == 1  # the source; variants train
    assert key.config["pools"]["positives_train"] == 1 + len(shadow.THIEF_POSITIVES)
    layout = PoolLayout(negatives=1, val_negatives=2, af=0, epochs=4).thief_aware()
    wanted = [s for g in pool_specs("lenet5", "digits", models.digest(model), layout).values() for s in g]
    assert all((tmp_path / "cache" / s.cache_name()).exists() for s in wanted if s.variant)
    r = CliRunner().invoke(main, ["verify", str(tmp_path / "k.key"), "--model", str(tmp_path / "m.safetensors"),
                                  "--unsigned", "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["decision"] == "match", r.output
    r = CliRunner().invoke(main, [*args, "--pool", "bogus"])
    assert r.exit_code == 2
