import pytest
import torch

from nnmark import envs, keys
from nnmark.attacks import finetune, weight_noise
from nnmark.data.roles import attacker_data, natural_pool
from nnmark.errors import AccessError, InputError, KeyFileError, NnmarkError
from nnmark.keys import KeyFile
from nnmark.marks.integrity import pairing
from nnmark.oracles import LabelsOracle, ProbabilitiesOracle, TorchOracle

SECRET = b"owner-secret"
USER = "alice"
N_PAIRS = 12
ALPHA = 1e-5  # the paper's 1e-6 needs ~10x more steps; the claims hold the same


@pytest.fixture(scope="module")
def key(lenet, mnist):
    """The paper's adjacent pairs (margin 0), one stage-2 step apart."""
    oracle = TorchOracle(lenet, mnist.shape)
    return pairing.create(oracle, N_PAIRS, secret=SECRET, user_id=USER, max_itr=150, alpha=ALPHA, max_steps=1000,
                          margin=0.0)


def test_head_is_keyed_deterministic_and_shift_invariant():
    w = pairing.derive_head(SECRET, USER, 10)
    assert w.shape == (2, 10) and w.dtype == torch.float64
    assert torch.equal(w, pairing.derive_head(SECRET, USER, 10))
    assert not torch.allclose(w, pairing.derive_head(SECRET, "bob", 10))
    assert not torch.allclose(w, pairing.derive_head(b"another", USER, 10))
    assert w.sum(dim=1).abs().max() < 1e-12
    z = torch.randn((500, 10), generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 4
    on_logits = pairing.head_outputs(z, w)
    on_log_probs = pairing.head_outputs(torch.log_softmax(z, dim=1), w)
    assert torch.allclose(on_logits, on_log_probs, atol=1e-9)
    labels, margins = pairing.binary_decision(torch.softmax(z, dim=1).float(), w)
    clear = margins.abs() > 1e-3
    assert clear.float().mean() > 0.95
    assert torch.equal(labels[clear], on_logits.argmax(dim=1)[clear])
    underflow = torch.tensor([[1.0] + [0.0] * 9])
    labels, margins = pairing.binary_decision(underflow, w)
    assert torch.isfinite(margins).all()


def test_stage1_reduces_the_combined_loss_towards_the_boundary(lenet, mnist):
    oracle = TorchOracle(lenet, mnist.shape)
    w = pairing.derive_head(SECRET, USER, 10)
    start = torch.rand((8, *mnist.shape), generator=torch.Generator().manual_seed(3))
    x, itr, history = pairing.approach_boundary(
        oracle, w, 8, lam=10.0, lr=1e-3, max_itr=60, tol=0.0, patience=1, activation_on="logits", seed=3
    )
    assert itr == 60 and len(history) == 60
    assert history[-1] < 0.1 * history[0]
    _, m_start = pairing.binary_labels(oracle, w, start)
    _, m_end = pairing.binary_labels(oracle, w, x)
    assert m_end.abs().median() < 0.05 * m_start.abs().median()
    assert x.min() >= 0 and x.max() <= 1
    _, itr, history = pairing.approach_boundary(
        oracle, w, 8, lam=10.0, lr=1e-3, max_itr=60, tol=1.0, patience=3, activation_on="head", seed=3
    )
    assert itr == 3 and len(history) == 4


def test_pairs_straddle_the_boundary_a_step_apart(lenet, mnist, key):
    c = key.config
    assert key.method == "pairs" and c["user_id"] == USER
    assert c["n_pairs"] + c["dropped"] == c["n_pairs_requested"] == N_PAIRS and c["n_pairs"] >= N_PAIRS - 2
    assert len(key.queries) == 2 * c["n_pairs"] and key.queries.dtype == torch.float32
    before, after = key.queries[0::2], key.queries[1::2]
    assert (key.expected[0::2] != key.expected[1::2]).all()
    assert (before - after).abs().max() <= ALPHA + 2**-23  # one step, up to float32 rounding
    w = pairing.derive_head(SECRET, USER, 10)
    labels, margins = pairing.binary_labels(TorchOracle(lenet, mnist.shape), w, key.queries)
    assert torch.equal(labels, key.expected)
    assert torch.equal(margins, key.extras["margins"])
    assert (key.extras["crossing_steps"] >= 1).all()


def test_tiny_weight_noise_flips_pairs_while_natural_labels_hold(lenet, mnist, key):
    natural = natural_pool(mnist).x[:500]
    clean = TorchOracle(lenet, mnist.shape).labels(natural)
    for std, least in [(1e-3, 0.7), (1e-4, 0.3)]:
        suspect = TorchOracle(weight_noise(lenet, std, seed=1), mnist.shape)
        verdict = pairing.verify(suspect, key, secret=SECRET)
        assert verdict.decision == "tampered" and not verdict.passed
        assert verdict.statistic >= least
        assert (suspect.labels(natural) != clean).float().mean() <= 0.004


def test_tiny_finetune_flips_pairs_while_natural_labels_hold(lenet, mnist, key):
    attack = attacker_data(mnist)
    suspect = TorchOracle(finetune(lenet, attack.x, attack.y, lr=1e-4, steps=3, seed=1), mnist.shape)
    verdict = pairing.verify(ProbabilitiesOracle(suspect), key, secret=SECRET)
    assert verdict.decision == "tampered" and verdict.statistic >= 0.5
    natural = natural_pool(mnist).x[:500]
    assert torch.equal(suspect.labels(natural), TorchOracle(lenet, mnist.shape).labels(natural))


def test_verify_is_the_same_white_box_and_through_probabilities(lenet, mnist, key, tmp_path):
    white = pairing.verify(TorchOracle(lenet, mnist.shape), key, secret=SECRET)
    black = pairing.verify(ProbabilitiesOracle(TorchOracle(lenet, mnist.shape)), key, secret=SECRET)
    assert white.decision == "intact" and white.passed and white.statistic == 0.0 and white.flipped == []
    assert white.queries == len(key.queries) and white.to_dict() == black.to_dict()
    noisy = weight_noise(lenet, 1e-4, seed=2)
    assert (pairing.verify(TorchOracle(noisy, mnist.shape), key, secret=SECRET).to_dict()
            == pairing.verify(ProbabilitiesOracle(TorchOracle(noisy, mnist.shape)), key, secret=SECRET).to_dict())
    keys.save(key, tmp_path / "k.nnkey", secret=SECRET)
    loaded = keys.load(tmp_path / "k.nnkey", secret=SECRET)
    assert pairing.verify(TorchOracle(lenet, mnist.shape), loaded, secret=SECRET).to_dict() == white.to_dict()


def test_a_wrong_secret_or_user_does_not_pass(lenet, mnist, key):
    oracle = TorchOracle(lenet, mnist.shape)
    wrong = pairing.verify(oracle, key, secret=b"not-the-secret")
    assert wrong.decision == "tampered" and wrong.statistic >= 0.9
    assert wrong.details["flipped_pairs"] and len(wrong.flipped) >= wrong.details["n_pairs"] * 0.9
    other = KeyFile("pairs", {**key.config, "user_id": "mallory"}, key.queries, key.expected)
    assert pairing.verify(oracle, other, secret=SECRET).statistic >= 0.9


def test_margin_pairs_stand_clear_of_benign_numerics_and_are_deterministic(lenet, mnist):
    oracle = TorchOracle(lenet, mnist.shape)
    args = dict(secret=SECRET, user_id="bob", max_itr=100, alpha=ALPHA, max_steps=1000, margin=1e-3, seed=5)
    key = pairing.create(oracle, 4, **args)
    assert (key.extras["margins"].abs() >= 1e-3).all()
    assert (key.expected[0::2] != key.expected[1::2]).all()
    for name in ("float64", "batch1", "mkldnn-off"):
        assert pairing.verify(envs.get(name).oracle(lenet, mnist.shape), key, secret=SECRET).passed
    again = pairing.create(oracle, 4, **args)
    assert torch.equal(key.queries, again.queries) and key.config == again.config


def test_bad_arguments_raise(lenet, mnist, key):
    oracle = TorchOracle(lenet, mnist.shape)
    with pytest.raises(AccessError):
        pairing.create(ProbabilitiesOracle(oracle), 2, secret=SECRET, user_id=USER)
    with pytest.raises(AccessError):
        pairing.verify(LabelsOracle(oracle), key, secret=SECRET)
    for bad in [dict(secret=b""), dict(user_id=""), dict(activation_on="all"), dict(alpha=0.0),
                dict(margin=-1.0), dict(max_steps=0), dict(lam=-1.0)]:
        with pytest.raises(ValueError):
            pairing.create(oracle, 2, **{"secret": SECRET, "user_id": USER, **bad})
    with pytest.raises(ValueError):
        pairing.create(oracle, 0, secret=SECRET, user_id=USER)
    with pytest.raises(NnmarkError, match="no pair crossed"):
        pairing.create(oracle, 2, secret=SECRET, user_id=USER, max_itr=0, alpha=1e-9, max_steps=2)
    with pytest.raises(ValueError):
        pairing.verify(oracle, key, secret="text, not bytes")
    odd = KeyFile("pairs", key.config, key.queries[:3], key.expected[:3])
    with pytest.raises(KeyFileError):
        pairing.verify(oracle, odd, secret=SECRET)
    with pytest.raises(KeyFileError):
        pairing.verify(oracle, KeyFile("dbi", key.config, key.queries, key.expected), secret=SECRET)
    with pytest.raises(KeyFileError):
        pairing.verify(TorchOracle(lenet, mnist.shape, num_classes=11), key, secret=SECRET)
    with pytest.raises(InputError):
        pairing.binary_labels(oracle, pairing.derive_head(SECRET, USER, 10), key.queries * 2)
