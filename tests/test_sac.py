"""SAC (Guan et al.): the source and a copy distilled from it match, independently trained models do not; the key's
calibration decides, on probabilities or, for a labels-only oracle, on one-hot outputs."""

import json

import pytest
import torch
from click.testing import CliRunner

from nnmark import data, keys, models
from nnmark.attacks.distill import distill, fresh_copy
from nnmark.attacks.noise import relative_weight_noise
from nnmark.audit import run as audit
from nnmark.bench import thefts
from nnmark.cli import main
from nnmark.data.roles import natural_pool
from nnmark.errors import ArgumentError, InputError, KeyFileError, NnmarkError
from nnmark.marks.ownership import sac, shadow
from nnmark.marks.ownership.metafinger import Pools
from nnmark.marks.ownership.shadow import PoolLayout, ShadowSpec, build_pool, pool_specs, train_shadow
from nnmark.models import training
from nnmark.models.training import train
from nnmark.oracles import LabelsOracle, TorchOracle

EPOCHS = 5
LAYOUT = PoolLayout(negatives=3, val_negatives=2, af=0, epochs=EPOCHS)
"""Five independent calibration LeNet-5s, laid out as ``nnmark mark sac --negatives 3 --val-negatives 2 --af 0
--shadow-epochs 5`` lays them out, so the CLI test finds them in the cache."""
SECRET = "a long test secret"
SCRATCH = {"scratch_negatives": 4, "scratch_epochs": EPOCHS}
"""Four scratch negatives of the source's recipe in the test keys (the default's 20 cost 20 trainings a key)."""
POOLS_ONLY = {"scratch_negatives": 0}
"""The keys of tests about something else calibrate on the pools' models alone."""


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """digits; the source (seed 0) saved as a checkpoint; calibration pools in a cache; a distilled copy; two
    independent models (seeds 7, 8); the scratch negatives, trained once; a SAC-m key and a (screened) SAC-w key."""
    torch.manual_seed(0)
    ds = data.load("digits")
    root = tmp_path_factory.mktemp("sac")
    source = train_shadow(ShadowSpec("lenet5", "digits", 0, epochs=EPOCHS))
    path = root / "source.safetensors"
    models.save(source, models.ModelConfig("lenet5", ds.shape, ds.num_classes, data="digits", seed=0), path)
    specs = pool_specs("lenet5", "digits", models.digest(source), LAYOUT, seed=0)
    pool = build_pool([s for group in specs.values() for s in group], cache_dir=root / "cache", executor="serial")
    pools = Pools(**pool.groups(specs))
    independent = [train_shadow(ShadowSpec("lenet5", "digits", s, epochs=EPOCHS)) for s in (7, 8)]
    distilled = distill(source, ds.train.x, ds.train.y, alpha=1.0, epochs=15, seed=5).eval()
    scratch = sac.scratch_models(source, ds.train, SCRATCH["scratch_negatives"], epochs=EPOCHS, seed=0)
    key = sac.create(source, pools, ds.train.x, dataset=ds, scratch=scratch, **SCRATCH)
    key_w = sac.create(source, pools, ds.train.x, variant="w", dataset=ds, scratch=scratch, **SCRATCH)
    return {"ds": ds, "root": root, "path": path, "source": source, "pools": pools, "independent": independent,
            "distilled": distilled, "scratch": scratch, "key": key, "key_w": key_w}


def _verify(model, key, ds, labels_only=False):
    oracle = TorchOracle(model, ds.shape)
    return sac.verify(LabelsOracle(oracle) if labels_only else oracle, key)


@pytest.mark.parametrize("variant, labels_only", [("m", False), ("m", True), ("w", False)])
def test_the_source_and_a_distilled_copy_match_and_independent_models_do_not(world, variant, labels_only):
    """(SAC-w on digits keeps 13 screened images: too few for one-hot correlation to decide, and too few for the
    distilled copy's p-value to clear 0.01 on every machine: it lies at 0.01-0.02 depending on the thread count the
    models trained with, so SAC-w asks of it only what the AUC asks: closer than every calibration model.)"""
    ds, key = world["ds"], world["key" if variant == "m" else "key_w"]
    out = "labels" if labels_only else "probabilities"
    calibration = key.config["calibration"][out]
    for model in (world["source"], world["distilled"]):
        verdict = _verify(model, key, ds, labels_only)
        assert verdict.statistic < min(calibration["distances"]) and verdict.details["output"] == out
        if variant == "m" or model is world["source"]:
            assert verdict.decision == "match" and verdict.passed and verdict.details["p_value"] < 0.01
    for model in world["independent"]:
        verdict = _verify(model, key, ds, labels_only)
        assert verdict.decision == "no match" and not verdict.passed
        assert verdict.statistic > _verify(world["distilled"], key, ds, labels_only).statistic


def test_a_labels_only_oracle_is_judged_on_one_hot_outputs_reported_beside_probabilities(world):
    ds, key, model = world["ds"], world["key"], world["independent"][0]
    on_labels = _verify(model, key, ds, labels_only=True)
    on_probabilities = _verify(model, key, ds)
    labels = model(key.queries).argmax(dim=1)
    expected = sac.correlation_distance(sac.correlation_matrix(sac.one_hot(key.expected, 10)),
                                        sac.correlation_matrix(sac.one_hot(labels, 10)))
    assert on_labels.statistic == pytest.approx(expected) and on_labels.details["output"] == "labels"
    assert on_probabilities.details["labels"]["distance"] == pytest.approx(expected)
    assert on_probabilities.statistic != pytest.approx(expected)
    assert on_labels.queries == on_probabilities.queries == len(key.expected)


def test_the_key_records_the_source_outputs_threshold_and_calibration_distances(world, tmp_path):
    ds, key, pools = world["ds"], world["key"], world["pools"]
    probabilities = TorchOracle(world["source"], ds.shape).probabilities(key.queries)
    assert torch.equal(key.extras["probabilities"], probabilities) and torch.equal(key.expected, probabilities.argmax(1))
    assert key.config["p_value"] == "student-t" and key.config["format"] == sac.FORMAT
    assert key.config["temperature"] == sac.PAPER_TEMPERATURE and "screen" not in key.config  # SAC-m: the paper's T
    first = pools.negatives_train[0]
    for out in sac.OUTPUTS:
        cal = key.config["calibration"][out]
        assert cal["threshold"] == min(cal["distances"])
        own, theirs = (sac.fingerprints(TorchOracle(m, ds.shape).probabilities(key.queries), 1.0)
                       for m in (world["source"], first))
        assert cal["distances"][0] == pytest.approx(sac.correlation_distance(own[out], theirs[out]))
    keys.save(key, tmp_path / "sac.key", secret=SECRET.encode())
    loaded = keys.load(tmp_path / "sac.key", secret=SECRET.encode())
    assert _verify(world["distilled"], loaded, ds).passed


def test_the_decision_needs_a_distance_below_the_threshold_and_a_p_value_below_the_bound():
    cal = sac.calibrate([0.20, 0.22, 0.21, 0.23, 0.24])
    assert cal["threshold"] == 0.20 and cal["std"] > 0
    near, far = sac.judge(0.05, cal, 0.01), sac.judge(0.30, cal, 0.01)
    assert near["match"] and near["p_value"] < 0.01 and near["p_value_empirical"] == pytest.approx(1 / 6)
    assert not far["match"] and far["p_value"] > 0.5 and far["p_value_empirical"] == 1.0
    assert not sac.judge(0.20, cal, 0.5)["match"]  # at the threshold: not below it, however probable
    just_below = sac.judge(0.199, cal, 0.01)  # below every calibration model, but not improbable for one
    assert not just_below["match"] and just_below["p_value"] > 0.01
    assert sac.judge(0.199, cal, 0.5)["match"]
    assert sac.p_values(0.1, cal)[0] < sac.p_values(0.15, cal)[0] < sac.p_values(0.2, cal)[0]


def test_a_tampered_threshold_or_bound_in_the_key_turns_a_match_into_no_match(world):
    ds, key = world["ds"], world["key"]
    distilled = _verify(world["distilled"], key, ds)
    for change in ({"threshold": distilled.statistic}, {"max_p_value": distilled.details["p_value"]}):
        config = json.loads(json.dumps(key.config))
        if "threshold" in change:
            config["calibration"]["probabilities"]["threshold"] = change["threshold"]
        else:
            config["max_p_value"] = change["max_p_value"]
        tampered = keys.KeyFile(sac.METHOD, config, key.queries, key.expected, key.extras)
        assert not _verify(world["distilled"], tampered, ds).passed


def test_a_key_may_decide_on_one_hot_labels_even_when_the_suspect_gives_probabilities(world):
    """decide_on "labels" (format 3) judges a probabilities oracle on its one-hot outputs, the probabilities' result
    beside it; a key without decide_on (format 1 or 2) decides on probabilities. The labels calibration is moved to
    the distilled copy's one-hot distance, so only the output that decides tells a match from no match."""
    ds, key, distilled = world["ds"], world["key"], world["distilled"]
    assert key.config["decide_on"] == "probabilities" and key.config["format"] == sac.FORMAT
    on_labels = _verify(distilled, key, ds, labels_only=True).statistic
    config = json.loads(json.dumps(key.config))
    config["calibration"]["labels"]["threshold"] = on_labels
    for decide_on, passed in (("labels", False), ("probabilities", True), (None, True)):
        if decide_on is None:
            del config["decide_on"]
        else:
            config["decide_on"] = decide_on
        verdict = _verify(distilled, keys.KeyFile(sac.METHOD, config, key.queries, key.expected, key.extras), ds)
        used = decide_on or "probabilities"
        other = "probabilities" if used == "labels" else "labels"
        assert verdict.passed is passed and verdict.details["output"] == used and other in verdict.details
        assert (verdict.statistic == pytest.approx(on_labels)) is (used == "labels")
    for bad in ("logits", ["labels"]):
        config["decide_on"] = bad
        with pytest.raises(KeyFileError, match="decide_on"):
            _verify(distilled, keys.KeyFile(sac.METHOD, config, key.queries, key.expected, key.extras), ds)
    with pytest.raises(ArgumentError, match="decide_on"):
        sac.create(world["source"], world["pools"], ds.train.x, decide_on="logits", dataset=ds)


def test_sac_w_asks_natural_images_the_source_gets_wrong(world):
    ds, source = world["ds"], world["source"]
    key = sac.create(source, world["pools"], ds.train.x, variant="w", screen="none", **POOLS_ONLY,
                     dataset=ds)
    pool = natural_pool(ds)
    rows = [int(torch.nonzero((pool.x == q).flatten(1).all(dim=1))[0]) for q in key.queries]
    assert key.config["misclassified"] >= len(rows) >= sac.MIN_KEPT and key.config["screening_models"] == 0
    assert (source(key.queries).argmax(1) != pool.y[rows]).all()
    distilled = _verify(world["distilled"], key, ds)
    assert distilled.statistic < min(key.config["calibration"]["probabilities"]["distances"])


def test_sharpened_outputs_are_the_logits_at_a_temperature_whatever_their_per_sample_shift():
    z = torch.randn(30, 10, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 4
    shifted = z + torch.randn(30, 1, dtype=torch.float64) * 50  # an API's logits may carry any per-sample constant
    for logits in (z, shifted):
        p = torch.softmax(logits, dim=1)
        assert torch.allclose(sac.sharpen(p, 0.1), torch.softmax(z / 0.1, dim=1), atol=1e-9)
        assert torch.allclose(sac.correlation_matrix(sac.sharpen(p, 0.1)),
                              sac.correlation_matrix(torch.softmax(z / 0.1, dim=1)), atol=1e-9)
    p = torch.softmax(z, dim=1)
    assert torch.equal(sac.sharpen(p, 1.0), p)  # the paper's temperature: the probabilities themselves
    zeros = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0]])  # what a float32 API returns for a confident model
    assert torch.isfinite(sac.sharpen(zeros, 0.1)).all()
    assert torch.allclose(sac.sharpen(zeros, 0.1)[1], torch.tensor([0.5, 0.5, 0.0], dtype=torch.float64))


def test_the_key_compares_sharpened_probabilities_and_a_format_1_key_the_plain_ones(world):
    ds, key, model = world["ds"], world["key_w"], world["independent"][0]
    assert key.config["temperature"] == sac.SHARP_TEMPERATURE == 0.1
    theirs = TorchOracle(model, ds.shape).probabilities(key.queries)
    sharp, plain = (sac.correlation_distance(sac.correlation_matrix(sac.sharpen(key.extras["probabilities"], t)),
                                             sac.correlation_matrix(sac.sharpen(theirs, t))) for t in (0.1, 1.0))
    verdict = _verify(model, key, ds)
    assert verdict.statistic == pytest.approx(sharp) and verdict.details["temperature"] == 0.1
    config = {name: value for name, value in key.config.items() if name not in ("temperature", "format")}
    old = keys.KeyFile(sac.METHOD, config, key.queries, key.expected, key.extras)
    assert _verify(model, old, ds).statistic == pytest.approx(plain) != pytest.approx(sharp)


def test_the_screen_keeps_the_images_on_which_the_source_decides_unlike_most_independent_models(world):
    source, y = torch.tensor([0, 1, 2, 3]), torch.tensor([9, 1, 9, 9])
    others = [torch.tensor([0, 1, 0, 0]), torch.tensor([0, 0, 0, 9]), torch.tensor([1, 1, 0, 9])]
    assert sac.screened("minority", source, others, y).tolist() == [False, False, True, True]  # 2/3, 2/3, 0, 0
    assert sac.screened("minority", source, others[:2], y).tolist() == [False, False, True, True]  # 1/2 is not < 1/2
    assert sac.screened("wrong", source, others, y).tolist() == [True, False, True, False]  # 3/3, 1/3, 3/3, 1/3 wrong
    assert sac.screened("none", source, [], y).all()
    with pytest.raises(ArgumentError, match="screen"):
        sac.screened("minority", source, [], y)
    ds, pools, key = world["ds"], world["pools"], world["key_w"]

    def share(key):
        said = [m(key.queries).argmax(dim=1) for m in pools.negatives_val]
        return torch.stack([s == key.expected for s in said]).double().mean(dim=0)

    assert key.config["screen"] == "minority" and key.config["screening_models"] == len(pools.negatives_val)
    assert (share(key) < 0.5).all() and key.config["kept"] == key.config["screened"] < key.config["misclassified"]
    unscreened = sac.create(world["source"], pools, ds.train.x, variant="w", screen="none", **POOLS_ONLY,
                            dataset=ds)
    assert (share(unscreened) >= 0.5).any() and unscreened.config["kept"] == key.config["misclassified"]


def test_the_rare_screen_orders_the_sources_errors_by_the_mean_probability_independent_models_give_its_label(world):
    source = torch.tensor([0, 1, 2, 3])
    others = [torch.tensor([[1, 0, 0, 0], [0.25, 0.75, 0, 0], [0.5, 0, 0.5, 0], [0, 0, 0, 1]]),
              torch.tensor([[0, 1, 0, 0], [0.25, 0.75, 0, 0], [0.5, 0, 0.5, 0], [0.5, 0, 0, 0.5]])]
    assert sac.rarest(source, others).tolist() == [0, 2, 1, 3]  # means 0.5, 0.75, 0.5, 0.75: ties keep their order
    assert sac.rarest(source, others[1:]).tolist() == [0, 2, 3, 1]  # 0, 0.75, 0.5, 0.5
    with pytest.raises(ArgumentError, match="rare screen"):
        sac.rarest(source, [])
    with pytest.raises(ArgumentError, match="screen of labels"):
        sac.screened("rare", source, [o.argmax(dim=1) for o in others], source)
    ds, pools = world["ds"], world["pools"]
    rare = {"variant": "w", "screen": "rare", "max_p_value": 0.3, **POOLS_ONLY}  # K 3: the order, not the bound
    key = sac.create(world["source"], pools, ds.train.x, n=12, **rare, dataset=ds)
    everything = sac.create(world["source"], pools, ds.train.x, n=1000, **rare, dataset=ds)

    def given(key):
        said = [TorchOracle(m, ds.shape).probabilities(key.queries).double() for m in pools.negatives_val]
        return torch.stack([p[torch.arange(len(key.expected)), key.expected] for p in said]).mean(dim=0)

    kept, rest = given(key), given(everything)
    assert key.config["kept"] == 12 < everything.config["kept"] == everything.config["misclassified"]
    assert torch.equal(kept, rest[:12]) and (kept[:-1] <= kept[1:]).all() and (rest[:-1] <= rest[1:]).all()
    assert key.config["screening_models"] == 2 and key.config["calibrated_on"]["families"] == 3


def test_an_agreement_key_judges_the_suspects_labels_on_the_sources(world):
    """statistic "agreement" (format 5): d = the share of queries the suspect labels otherwise than the source,
    calibrated the same way; the source matches, independent models do not, and it decides on labels only."""
    ds, source, pools = world["ds"], world["source"], world["pools"]
    key = sac.create(source, pools, ds.train.x, variant="w", screen="rare", statistic="agreement",
                     decide_on="labels", scratch=world["scratch"], **SCRATCH, dataset=ds)
    assert key.config["statistic"] == "agreement" and key.config["format"] == 5
    calibration = key.config["calibration"]["labels"]["distances"]
    calibrating = [*pools.negatives_train, *world["scratch"]]
    assert calibration == [pytest.approx(float((m(key.queries).argmax(1) != key.expected).double().mean()))
                           for m in calibrating]
    mine = _verify(source, key, ds)
    assert mine.passed and mine.statistic == 0.0 and mine.statistic_name == "agreement_distance"
    for model in world["independent"]:
        verdict = _verify(model, key, ds, labels_only=True)
        want = float((model(key.queries).argmax(1) != key.expected).double().mean())
        assert not verdict.passed and verdict.statistic == pytest.approx(want) and verdict.details["output"] == "labels"
    with pytest.raises(ArgumentError, match="agreement decides on labels"):
        sac.create(source, pools, ds.train.x, variant="w", statistic="agreement", **POOLS_ONLY, dataset=ds)
    with pytest.raises(ArgumentError, match="statistic"):
        sac.create(source, pools, ds.train.x, statistic="rank", **POOLS_ONLY, dataset=ds)


def test_calibration_leaves_out_the_screening_models_and_takes_scratch_and_extra_negatives(world):
    ds, pools, key_w = world["ds"], world["pools"], world["key_w"]
    assert sac.DEFAULT_DISTILLED_NEGATIVES == 0 and key_w.config["distilled_negatives"] == 0
    assert key_w.config["calibration_models"] == len(pools.negatives_train) + 4 == len(
        key_w.config["calibration"]["probabilities"]["distances"])
    assert world["key"].config["calibration_models"] == len(pools.negatives_train) + len(pools.negatives_val) + 4
    assert key_w.config["calibrated_on"] == {"families": 3, "scratch": 4, "extra": 0, "distilled": 0}
    assert world["key"].config["calibrated_on"] == {"families": 5, "scratch": 4, "extra": 0, "distilled": 0}
    # a distilled model among the calibration negatives pulls the threshold below its own distance: never claimed
    distilled = world["distilled"]
    assert _verify(distilled, world["key"], ds).passed
    with_it = sac.create(world["source"], pools, ds.train.x, extra_negatives=[distilled], **POOLS_ONLY,
                         max_p_value=0.3, dataset=ds)  # so close a negative widens the null: even the source needs 0.3
    verdict = _verify(distilled, with_it, ds)
    assert with_it.config["extra_negatives"] == 1 and verdict.statistic == pytest.approx(
        with_it.config["calibration"]["probabilities"]["threshold"])
    assert not verdict.passed


def test_the_default_calibration_trains_models_of_the_sources_recipe_not_students(world, monkeypatch):
    """Students of the families spread less than from-scratch models of the source's recipe, so a null fitted on them
    is too narrow (on Fashion-MNIST it claimed 4.3% of held-out LeNet-5s at the stated 1%): the default calibrates on
    from-scratch models, at least 12 of them, and distils none."""
    assert sac.DEFAULT_SCRATCH_NEGATIVES >= 12 and sac.DEFAULT_DISTILLED_NEGATIVES == 0
    made = []

    def spy(source, owner, k, *, epochs, seed, device):
        made.append((source, owner, k, epochs))
        assert device == sac.SCRATCH_DEVICE == "cpu"
        return sac_scratch(source, owner, 2, epochs=EPOCHS, seed=seed)  # fewer than the default, for speed

    sac_scratch = sac.scratch_models
    monkeypatch.setattr(sac, "scratch_models", spy)
    monkeypatch.setattr(sac, "distill", lambda *a, **k: pytest.fail("the default calibration distils no student"))
    ds = world["ds"]
    key = sac.create(world["source"], world["pools"], ds.train.x, dataset=ds)
    (source, owner, k, epochs), = made
    assert source is world["source"] and owner is ds.train and k == sac.DEFAULT_SCRATCH_NEGATIVES
    assert epochs == sac.SCRATCH_EPOCHS == shadow.DEFAULT_EPOCHS and key.config["scratch_epochs"] == epochs
    assert key.config["calibrated_on"]["scratch"] == 2 and key.config["calibrated_on"]["distilled"] == 0


def test_scratch_models_are_the_sources_architecture_trained_on_the_owners_labels_from_seeds_of_their_own(
        world, monkeypatch):
    ds, source = world["ds"], world["source"]
    groups = pool_specs("lenet5", "digits", models.digest(source), LAYOUT, seed=0)
    specs = [s for group in groups.values() for s in group]
    taken = {0} | {s.seed for s in specs} | {s.augment_seed for s in specs if s.augment_seed is not None}
    taken |= {sac.DISTILLED_SEEDS + i for i in range(20)} | {thefts.theft_seed(0)}
    taken |= {thefts.distilled_seed(0, i) for i in range(20)}
    seen = []

    def spy(model, split, *, epochs, seed):
        seen.append((split, epochs, seed))
        return train(model, split, epochs=epochs, seed=seed)

    monkeypatch.setattr(sac, "train", spy)
    made = sac.scratch_models(source, ds.train, 3, epochs=EPOCHS, seed=0)
    seeds = [s for _, _, s in seen]
    assert len(made) == 3 and len(set(seeds)) == 3 and not set(seeds) & taken
    assert all(split is ds.train and epochs == EPOCHS for split, epochs, _ in seen)
    shapes = [p.shape for p in source.parameters()]
    for i, model in enumerate(made):
        assert [p.shape for p in model.parameters()] == shapes and not model.training
        assert not torch.equal(next(model.parameters()), next(source.parameters()))
        assert not any(torch.equal(next(model.parameters()), next(m.parameters())) for m in made[:i])
        assert (model(ds.test.x).argmax(1) == ds.test.y).double().mean() > 0.8  # trained on the true labels
    assert sac.scratch_models(source, ds.train, 0, epochs=EPOCHS, seed=0) == []


def test_scratch_specs_are_the_pools_recipe_from_the_scratch_seeds():
    groups = pool_specs("lenet5", "digits", "0" * 64, PoolLayout(negatives=2, val_negatives=1, af=1, epochs=4), seed=0)
    pooled = {s.seed for group in groups.values() for s in group}
    negative = groups["negatives_val"][0]
    made = sac.scratch_specs(negative, 3, epochs=6, seed=2)
    assert [s.seed for s in made] == [sac.SCRATCH_SEEDS + 2 + i for i in range(3)]
    assert not pooled & {s.seed for s in made}
    assert all((s.arch, s.data, s.card, s.micro_batch, s.epochs, s.augmented) == ("lenet5", "digits", None, None, 6,
                                                                                   False) for s in made)
    assert sac.scratch_specs(negative, 0, epochs=6, seed=0) == []
    with pytest.raises(ArgumentError, match="from-scratch spec"):
        sac.scratch_specs(groups["negatives_train"][-1], 1, epochs=6, seed=0)


def test_scratch_models_made_once_calibrate_as_those_a_key_trains(world, monkeypatch):
    """A caller making several keys of one source (the ownership bench) trains the scratch models once."""
    ds, source, pools = world["ds"], world["source"], world["pools"]
    made = sac.scratch_models(source, ds.train, 2, epochs=EPOCHS, seed=0)
    trained = sac.create(source, pools, ds.train.x, dataset=ds, scratch_negatives=2, scratch_epochs=EPOCHS)
    monkeypatch.setattr(sac, "scratch_models", lambda *a, **k: pytest.fail("given scratch models are trained again"))
    given = sac.create(source, pools, ds.train.x, dataset=ds, scratch_negatives=2, scratch_epochs=EPOCHS, scratch=made)
    assert given.config["calibration"] == trained.config["calibration"]
    assert given.config["calibrated_on"] == trained.config["calibrated_on"]
    assert given.config["calibrated_on"]["scratch"] == 2
    with pytest.raises(ArgumentError, match="^1 scratch models given for scratch_negatives = 2$"):
        sac.create(source, pools, ds.train.x, dataset=ds, scratch_negatives=2, scratch=made[:1])


def test_scratch_negatives_need_the_owners_labelled_images(world):
    ds = world["ds"]
    shuffled = ds.train.x.flip(0)
    with pytest.raises(InputError, match="not those of digits"):
        sac.create(world["source"], world["pools"], shuffled, dataset=ds, scratch_negatives=1)
    with pytest.raises(ArgumentError, match="scratch_negatives"):
        sac.create(world["source"], world["pools"], ds.train.x, dataset=ds, scratch_negatives=-1)


def test_the_fitted_p_value_holds_its_bound_on_draws_of_a_normal_null():
    """p = P[T_{K-1} <= (d - mu) / (s sqrt(1 + 1/K))] is exact for a new draw of the calibration models' normal law:
    over 20,000 nulls of K = 5 draws, a fresh draw gets p < a in a share a of them (a plug-in normal, or no sqrt(1 +
    1/K), claims 2-4 times as often at 0.01)."""
    g = torch.Generator().manual_seed(0)
    draws = torch.randn(20_000, 6, generator=g, dtype=torch.float64) * 0.01 + 0.2
    fitted = torch.tensor([sac.p_values(float(row[-1]), sac.calibrate(row[:-1].tolist()))[0] for row in draws])
    for a in (0.01, 0.05, 0.2):
        assert abs(float((fitted < a).double().mean()) - a) < 4 * (a * (1 - a) / len(draws)) ** 0.5


def test_the_key_counts_its_calibration_models_by_kind_and_older_keys_verify_as_before(world):
    ds, key, distilled = world["ds"], world["key"], world["distilled"]
    assert key.config["format"] == sac.FORMAT == 5 and key.config["statistic"] == "correlation"
    verdict = _verify(distilled, key, ds)
    four = {name: value for name, value in key.config.items() if name != "statistic"}
    old = {name: value for name, value in four.items() if name not in ("calibrated_on", "scratch_epochs")}
    for fmt in (4, 3, None):
        config = dict(four if fmt == 4 else old, format=fmt) if fmt else {k: v for k, v in old.items() if k != "format"}
        again = _verify(distilled, keys.KeyFile(sac.METHOD, config, key.queries, key.expected, key.extras), ds)
        assert again.passed == verdict.passed and again.statistic == verdict.statistic
    for bad in (None, {"families": 5, "scratch": 3, "extra": 0, "distilled": 0}, {"families": 9},
                {"families": 5, "scratch": 4.0, "extra": 0, "distilled": 0},
                {"families": 6, "scratch": 4, "extra": -1, "distilled": 0}):
        config = dict(key.config, calibrated_on=bad)
        with pytest.raises(KeyFileError, match="calibrated_on"):
            _verify(distilled, keys.KeyFile(sac.METHOD, config, key.queries, key.expected, key.extras), ds)


def test_noised_copies_of_a_negative_are_one_family_with_it():
    """Eq. 1 copies keep about 0.9 of their base's parameters (cosine), independent models about 0.01."""
    base, other = (models.build("lenet5", (1, 8, 8), 10) for _ in range(2))
    copies = [relative_weight_noise(base, 3.0, seed=s) for s in (1, 2)]
    assert sac.one_per_family([base, *copies, other, copies[0]]) == [base, other]
    assert sac.one_per_family([copies[0], base, other]) == [copies[0], other]
    assert sac.one_per_family([base, relative_weight_noise(base, 1.0, seed=1)]) == [base]  # noise as large as weights
    smaller = models.build("lenet5", (1, 8, 8), 3)
    assert sac.one_per_family([base, smaller]) == [base, smaller]  # parameters of another shape: another family


def test_calibration_takes_one_draw_per_family_and_its_teachers(world):
    """The pools' noised copies of a negative do not calibrate (one of them once widened the null enough to miss
    extractions into VGG-11); the distilled negatives learn from the families' own models."""
    ds, pools = world["ds"], world["pools"]
    noised = [relative_weight_noise(pools.negatives_train[0], 3.0, seed=s) for s in (1, 2)]
    with_copies = Pools(pools.positives_train, [*pools.negatives_train, *noised], pools.positives_val,
                        pools.negatives_val)
    before = sac.create(world["source"], pools, ds.train.x, distilled_negatives=1, dataset=ds, **POOLS_ONLY)
    key = sac.create(world["source"], with_copies, ds.train.x, distilled_negatives=1, dataset=ds, **POOLS_ONLY)
    assert key.config["family_copies_left_out"] == 2 and before.config["family_copies_left_out"] == 0
    assert key.config["calibration"] == before.config["calibration"]
    assert key.config["calibration_models"] == len(pools.negatives_train) + len(pools.negatives_val) + 1


def test_distilled_negatives_are_students_of_the_teachers_in_turn(world):
    ds, teachers = world["ds"], world["independent"]
    students = sac.distill_negatives(teachers, ds.train.x, 3, epochs=15, seed=0)
    assert len(students) == 3 and all(s is not t for s in students for t in teachers)
    for student, teacher in zip(students, [*teachers, teachers[0]]):
        agree = (student(ds.test.x).argmax(1) == teacher(ds.test.x).argmax(1)).double().mean()
        assert agree > 0.8
    with pytest.raises(ArgumentError, match="teacher"):
        sac.distill_negatives([], ds.train.x, 1, epochs=1, seed=0)


def test_distilled_negatives_start_from_seeds_of_their_own(world, monkeypatch):
    """A student is initialised from its seed as a from-scratch model of that seed is: no distilled negative may start
    from the seed of the source, of its teacher or of another pool model (the students once took the seeds 1, 2, ...
    of the key's seed 0, those of the pool's negatives, seeded from the source's seed 0)."""
    ds, pools = world["ds"], world["pools"]
    groups = pool_specs("lenet5", "digits", models.digest(world["source"]), LAYOUT, seed=0)
    specs = [s for group in groups.values() for s in group]
    taken = {0} | {s.seed for s in specs} | {s.augment_seed for s in specs if s.augment_seed is not None}
    seen = []

    def spy(teacher, *args, seed, **kwargs):
        seen.append((teacher, seed))
        return distill(teacher, *args, seed=seed, **kwargs)

    monkeypatch.setattr(sac, "distill", spy)
    teachers = list(pools.negatives_train)
    assert len(sac.distill_negatives(teachers, ds.train.x, 4, epochs=1, seed=0)) == 4
    assert [t for t, _ in seen] == [*teachers, teachers[0]]
    seeds = [s for _, s in seen]
    assert len(set(seeds)) == 4 and not set(seeds) & taken
    teacher_seeds = [s.seed for s in groups["negatives_train"]]
    for (teacher, seed), own in zip(seen, [*teacher_seeds, teacher_seeds[0]]):
        assert not torch.equal(*(next(fresh_copy(teacher, v).parameters()) for v in (seed, own)))


def test_cutmix_pastes_one_square_of_a_donor_image_and_repeats_with_the_seed():
    x = torch.stack([torch.full((1, 8, 8), v) for v in (0.0, 0.5, 1.0)])
    q, base = sac.cutmix_queries(x, 20, patch=0.5, generator=torch.Generator().manual_seed(3))
    changed = (q != x[base]).flatten(1).sum(dim=1)
    assert q.shape == (20, 1, 8, 8) and (changed == 16).all()  # a 4 x 4 patch from an image of another value
    again, _ = sac.cutmix_queries(x, 20, patch=0.5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(q, again)
    with pytest.raises(ArgumentError, match="patch"):
        sac.cutmix_queries(x, 2, patch=0.0, generator=torch.Generator())


def test_bad_inputs_and_keys_are_refused(world):
    ds, key = world["ds"], world["key"]
    with pytest.raises(NnmarkError, match="no spread"):
        sac.calibrate([0.2, 0.2, 0.2])
    with pytest.raises(InputError, match="not those of digits"):
        sac.create(world["source"], world["pools"], ds.train.x[:-1], meta={"data": "digits"})
    with pytest.raises(ArgumentError, match="n >= 10"):
        sac.create(world["source"], world["pools"], ds.train.x, n=5, dataset=ds)
    broken = keys.KeyFile(sac.METHOD, key.config, key.queries, key.expected, {})
    with pytest.raises(KeyFileError, match="probabilities"):
        _verify(world["source"], broken, ds)


def _cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args], env={"NNMARK_SECRET": SECRET})


def test_mark_verify_and_audit_through_the_cli(world, tmp_path):
    out = tmp_path / "sac.key"
    r = _cli("mark", "sac", "--model", world["path"], "--negatives", 3, "--val-negatives", 2, "--af", 0,
             "--shadow-epochs", EPOCHS, "--executor", "serial", "--cache-dir", world["root"] / "cache", "--n", 50,
             "--scratch-negatives", 4, "--scratch-epochs", EPOCHS, "--out", out, "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["shadow_models_trained"] == 4 and json.loads(r.stdout)["kept"] == 50  # the scratch
    screened = tmp_path / "sac-w.key"
    r = _cli("mark", "sac", "--model", world["path"], "--negatives", 3, "--val-negatives", 2, "--af", 0,
             "--shadow-epochs", EPOCHS, "--executor", "serial", "--cache-dir", world["root"] / "cache",
             "--variant", "w", "--screen", "minority", "--temperature", 0.5, "--distilled-negatives", 3,
             "--scratch-negatives", 2, "--scratch-epochs", 3,
             "--max-p-value", 0.05, "--decide-on", "labels", "--out", screened, "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["shadow_models_trained"] == 2  # scratch models of other epochs than the first key's
    config = keys.load(screened, secret=SECRET.encode()).config
    assert (config["screen"], config["temperature"], config["calibration_models"], config["decide_on"]) == (
        "minority", 0.5, 8, "labels")
    assert config["calibrated_on"] == {"families": 3, "scratch": 2, "extra": 0, "distilled": 3}
    assert config["scratch_epochs"] == 3
    independent = tmp_path / "independent.safetensors"
    models.save(world["independent"][0], models.ModelConfig("lenet5", (1, 8, 8), 10, data="digits", seed=7),
                independent)
    assert _cli("verify", out, "--model", world["path"]).exit_code == 0
    r = _cli("verify", out, "--model", independent, "--json")
    assert r.exit_code == 1 and json.loads(r.stdout)["decision"] == "no match"
    loaded = audit.load_keys([out], secret=SECRET.encode())
    for model, passed in ((world["distilled"], True), (world["independent"][1], False)):
        result = audit.audit_key(TorchOracle(model, (1, 8, 8)), loaded[0], audit.Settings())
        assert result.passed is passed and result.rule == "whole key" and result.queries >= 50


def test_a_training_micro_batch_bounds_every_model_the_key_trains(world, tmp_path, monkeypatch, training_passes):
    """--train-micro-batch (here "auto", the default: as many images as fit the activation budget): the pools (cached
    apart) and the scratch models train at most that many images per pass; these small models' whole batches fit, so
    their pools keep their names. (An integer: ``test_cli``'s MetaFinger key.)"""
    def mark(*extra):
        out = tmp_path / "chunked.key"
        seen, r = training_passes(lambda: _cli(
            "mark", "sac", "--model", world["path"], "--negatives", 3, "--val-negatives", 2, "--af", 0,
            "--shadow-epochs", 1, "--executor", "serial", "--cache-dir", tmp_path / "cache", "--n", 20,
            "--scratch-negatives", 2, "--scratch-epochs", 1, "--max-p-value", 0.5, "--out", out, "--json", *extra))
        assert r.exit_code == 0, r.output
        assert json.loads(r.stdout)["shadow_models_trained"] == 7  # 3 + 2 pools' negatives, 2 scratch
        return max(seen), keys.load(out, secret=SECRET.encode()).config.get("train_micro_batch")

    def names():
        records = (json.loads(p.read_text()) for p in (tmp_path / "cache").glob("*.json"))
        return sorted(r["spec"].get("micro_batch", 0) for r in records)

    assert mark() == (32, None) and names() == [0] * 7  # auto: whole batches of 32, the spec names unchanged
    per = training.saved_bytes_per_image(models.load(world["path"])[0].train(), torch.rand(2, 1, 8, 8))
    monkeypatch.setattr(training, "ACTIVATION_BUDGET", 3 * per)  # as a ResNet-50 would: 3 images fit a pass
    assert mark("--train-micro-batch", "auto") == (3, 3) and names() == [0] * 7 + [3] * 7


def test_mark_a_rare_errors_agreement_key_through_the_cli(world, tmp_path):
    common = ["mark", "sac", "--model", world["path"], "--negatives", 3, "--val-negatives", 2, "--af", 0,
              "--shadow-epochs", EPOCHS, "--executor", "serial", "--cache-dir", world["root"] / "cache", "--variant",
              "w", "--screen", "rare", "--statistic", "agreement", "--scratch-negatives", 2, "--scratch-epochs", 3]
    out = tmp_path / "rare.key"
    r = _cli(*common, "--out", out)
    assert r.exit_code == 2 and "agreement decides on labels" in r.output and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1 and not out.exists()
    r = _cli(*common, "--decide-on", "labels", "--out", out, "--json")
    assert r.exit_code == 0, r.output
    config = keys.load(out, secret=SECRET.encode()).config
    assert (config["screen"], config["statistic"], config["decide_on"], config["format"]) == (
        "rare", "agreement", "labels", 5)
    assert config["kept"] == config["misclassified"] and config["calibrated_on"]["scratch"] == 2
    r = _cli("verify", out, "--model", world["path"], "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["statistic"] == 0.0
