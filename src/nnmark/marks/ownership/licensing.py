"""Licence tracing: one fine-tuned copy of a model per licensee, and which licensee a leaked model came from.

Builds on the function-coupled watermark (Wen et al., "On function-coupled watermarks for deep neural networks",
``marks/ownership/coupled.py``) and on fingerprinting codes for traitor tracing (Tardos, "Optimal probabilistic
fingerprint codes", 2003; Skoric et al., "Symmetric Tardos fingerprinting codes for arbitrary alphabet sizes", 2008).
Access: the owner fine-tunes the trained model (white box) to make the copies; labels only to trace.

A *family* is a base pair (i, j) of classes; its triggers are direct fusions of an image of class i (top-left)
and one of class j (bottom-right), as in the coupled watermark (eq. 2b). Each licensee's copy answers family f's
triggers with its own target class, the symbol c_{l,f} of its codeword, from the family's alphabet
A_f = {0..N_c-1} without {i, j} and without the class the unmarked source answers most often on f's triggers
(q = N_c - 3 symbols, or N_c - 2). Two schemes:

- ``code`` (default): every copy carries all m families; codeword c_l is drawn uniformly from A_1 x ... x A_m
  from the owner's secret. This is a q-ary Tardos code with the bias vectors fixed uniform (Skoric's Dirichlet
  parameter kappa -> infinity) and an exact conditional p-value in place of Tardos's score threshold Z.
- ``onehot``: licensee l's copy carries only family l (m = N licensees), target drawn from A_l; the simple
  scheme of one coupled watermark per licensee, kept as ``nnmark bench trace``'s baseline and not offered by
  ``nnmark license``: its null is assumed, not exact, and the 3-seed bench measured it naming a licensee for 6 of
  63 independent models and the unmarked source (the ``code`` scheme: 0 of 246 traces).

Symbols and defaults:
    N: licensees; m: families (``code``: ``FAMILIES`` = 40, at most N_c (N_c - 1) / 2 = 45 for 10 classes;
        ``onehot``: m = N);
    k: verification triggers per family (``PER_FAMILY`` = 4), fused from the natural pool (held-out test images),
        so a trace asks m * k queries (160 by default);
    K_train: training triggers per family (``TRAIN_PER_FAMILY`` = 60), fused from the training split, repeated
        ``REPEAT`` = 3 times in each copy's fine-tuning set beside ``CLEAN`` = 8,000 training images (``EPOCHS``
        = 3, Adam at ``LR`` = 2e-3 with cosine decay);
    n_{f,s}: how many of family f's k triggers the suspect answers s (labels only);
    S_l = sum_f n_{f, c_{l,f}}: licensee l's score (Tardos's accusation sum with the symmetric weights replaced by
        counts);
    epsilon_1: the bound on accusing any innocent licensee (``EPSILON`` = 1e-4);
    w: ``FEATURE_WEIGHT`` = 1, the weight of the feature-matching term of the copies' fine-tuning
        (``feature_matched``: each image's penultimate features pulled towards the mean features of its target
        class, over their mean squared norm), which carries the codeword through RTAL.

Accusation (``code``): for an innocent licensee, c_l was drawn independently of everything the suspect was made
from, so given the answers n, S_l is distributed as sum_f n_{f,U_f} with U_f uniform on A_f, independent. Its
exact law is the convolution of m small discrete laws (``null_pmf``) and p_l = P[S >= S_l] (``p_values``) is a
valid p-value whatever the suspect does (an unmarked model, an independent one, colluders' mixtures). Licensee l
is accused when p_l <= epsilon_1 / N (``threshold``, Bonferroni): the chance that *any* innocent licensee is
accused is at most epsilon_1. Unlike Tardos's rigorous bound this holds for the suspect at hand with no
assumption on the number of colluders c; collusion only lowers the colluders' scores (c colluders mixing answers
per query leave at least one of them about 1/c of each family's answers).

Accusation (``onehot``): family l's hits h_l = n_{l, c_{l,l}} out of k, against a binomial null
P[Bin(k, p0_l) >= h_l] with p0_l = max(1/N_c, the rate at which the unmarked source and the sibling copies that do
not carry family l answer c_{l,l} there) -- an assumed rate, not an exact bound (a model prone to answer c_{l,l}
on those fusions could be accused), and N * k queries.

Verdicts: "traced to l[, l'...]" (passed, CLI exit 0), else "unmarked source" when the suspect answers at least
``SOURCE_AGREEMENT`` of the triggers as the unmarked source did (the key's expected labels), else "no licensee".

Limits: a copy that the thief distills, or trains afresh on its own images labelled by the copy, is not traced
("no licensee"): the answers on the fusion triggers do not pass through training on natural images. The carriers
measured for it (boundary families; a per-licensee logit signal A_l phi(x) on natural images, read with an exact
Gaussian null) and why none was kept: ``docs/benchmarks/trace-carriers.md``.

Departures: the copies are fine-tuned, not trained with the coupled paper's random weight masks (eq. 4-6, not
tried here); K_train, REPEAT, the primer (``primer_targets``), the feature-matching term and the fine-tuning
schedule are nnmark's; Tardos's
biases p_i and score weights sqrt((1-p)/p) do not appear (see above). Codewords and triggers are drawn from
HMAC-SHA256(secret, seed), so a licensee who knows the seed cannot compute another's codeword to frame them.

Example::

    copies, key = licensing.license_copies(model, ds, ["alice", "bob"], secret=b"s3cret")
    verdict = licensing.trace(LabelsOracle(TorchOracle(copies[1], ds.shape)), key)   # "traced to bob"
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import math
import re
import time
import typing
from collections.abc import Callable, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from nnmark.data import Dataset, Split
from nnmark.data.roles import natural_pool
from nnmark.errors import ArgumentError, DataError, KeyFileError
from nnmark.keys import KeyFile
from nnmark.marks.ownership.coupled import base_pairs, direct_fusion
from nnmark.marks.spec import MethodSpec
from nnmark.marks.verdict import Verdict
from nnmark.models import DEFAULT_BATCH_SIZE, accuracy, device_of, digest, outputs
from nnmark.models.card import unwrap
from nnmark.models.training import EVAL_BATCH_SIZE, fit
from nnmark.oracles import Oracle
from nnmark.oracles.local import ModuleInputs

METHOD = "license"
Scheme = Literal["code", "onehot"]
SCHEMES: tuple[Scheme, ...] = typing.get_args(Scheme)
DEFAULT_SCHEME: Scheme = "code"
FAMILIES = 40
PER_FAMILY = 4
TRAIN_PER_FAMILY = 60
REPEAT = 3
CLEAN = 8_000
EPOCHS = 3
LR = 2e-3
EPSILON = 1e-4
FEATURE_WEIGHT = 1.0
SOURCE_AGREEMENT = 0.9
MAX_DROP = 0.005
DEFAULT_LICENSEE = "licensee"
NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
_TAG = b"nnmark.license/v1"


# --- the code (families, alphabets, codewords) ----------------------------------------------------------------


def derived_seed(secret: bytes, seed: int, what: str) -> int:
    """A 63-bit seed for ``what`` ("code", "triggers", "train"), HMAC-SHA256(secret, tag | seed | what)."""
    mac = hmac.new(bytes(secret), _TAG + b"|" + str(int(seed)).encode() + b"|" + what.encode(), hashlib.sha256)
    return int.from_bytes(mac.digest()[:8], "little") >> 1


def check_names(names: Sequence[str]) -> list[str]:
    """The licensee names, checked: at least one, distinct, each ``NAME_RE`` (they name the copies' files)."""
    names = list(names)
    bad = [n for n in names if not (isinstance(n, str) and NAME_RE.fullmatch(n))]
    if not names or bad:
        raise ArgumentError(f"licensee names must be 1-64 of [A-Za-z0-9_.-] (not starting with . or -), "
                            f"got {bad or names}")
    if len(set(names)) != len(names):
        raise ArgumentError(f"licensee names must be distinct, got {names}")
    return names


def pick_families(num_classes: int, m: int, generator: torch.Generator) -> torch.Tensor:
    """m distinct base pairs (i, j), (m, 2) int64, drawn without replacement; i goes top-left, j bottom-right."""
    pairs = [(i, j) for i in range(num_classes) for j in range(i + 1, num_classes)]
    if num_classes < 3 or not 1 <= m <= len(pairs):
        raise ArgumentError(f"{num_classes} classes give 1 to {len(pairs)} families (needs >= 3 classes), asked {m}")
    chosen = torch.tensor([pairs[int(c)] for c in torch.randperm(len(pairs), generator=generator)[:m]])
    swap = torch.rand(m, generator=generator) < 0.5
    return torch.where(swap[:, None], chosen.flip(1), chosen)


def alphabets(families: torch.Tensor, num_classes: int, natural: torch.Tensor | None = None) -> torch.Tensor:
    """A_f as a bool mask (m, N_c): every class but family f's base classes i and j and, when given, ``natural``
    (m,): the class the unmarked source answers most often on f's triggers (a copy answering it would look like
    the source, so it carries no information)."""
    allowed = torch.ones(len(families), num_classes, dtype=torch.bool)
    allowed.scatter_(1, families, False)
    if natural is not None:
        allowed.scatter_(1, natural[:, None], False)
    return allowed


def natural_answers(model: nn.Module, triggers: torch.Tensor, m: int) -> torch.Tensor:
    """The class ``model`` answers most often on each family's triggers (``triggers`` family by family): (m,)."""
    answers = outputs(model, triggers).argmax(1).cpu().view(m, -1)
    return answers.mode(1).values


def draw_codes(n: int, allowed: torch.Tensor, scheme: Scheme, generator: torch.Generator) -> torch.Tensor:
    """Codewords c (N, m) int64 over the alphabets ``allowed`` (m, N_c): ``code``: c_{l,f} uniform on A_f;
    ``onehot`` (m = N): c_{l,l} uniform on A_l and -1 (family absent) elsewhere."""
    picks = torch.multinomial(allowed.float(), n, replacement=True, generator=generator).T  # (N, m)
    if scheme == "code":
        return picks
    if len(allowed) != n:
        raise ArgumentError(f"the onehot scheme needs one family per licensee: {n} licensees, {len(allowed)} families")
    return torch.where(torch.eye(n, dtype=torch.bool), picks, torch.full_like(picks, -1))


def make_triggers(split: Split, families: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k direct-fusion triggers per family (coupled eq. 2b) from ``split``'s classes i and j: (m * k, C, H, W),
    family by family."""
    out = []
    for i, j in families.tolist():
        x_i, x_j = split.x[split.y == i], split.x[split.y == j]
        if len(x_i) == 0 or len(x_j) == 0:
            raise DataError(f"no images of class {i if len(x_i) == 0 else j} to fuse a trigger from")
        p, q = base_pairs(len(x_i), len(x_j), k, generator)
        out.append(direct_fusion(x_i[p], x_j[q]))
    return torch.cat(out)


# --- the copies -------------------------------------------------------------------------------------------------


def fine_tuning_set(train: Split, triggers: torch.Tensor, targets: torch.Tensor, k_train: int,
                    repeat: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The training split (labels one-hot) plus ``repeat`` copies of the training triggers of every family with a
    target row in ``targets`` (m, N_c): (x, soft targets)."""
    per_trigger = targets.repeat_interleave(k_train, 0)
    keep = per_trigger.sum(1) > 0
    x = torch.cat([train.x, triggers[keep].repeat(repeat, 1, 1, 1)])
    y = torch.cat([F.one_hot(train.y, targets.shape[1]).float(), per_trigger[keep].repeat(repeat, 1)])
    return x, y


def soft_cross_entropy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The ``fit`` loss hook for soft targets y (N, N_c)."""
    return F.cross_entropy(model(x), y)


def penultimate(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, the input of the model's last ``nn.Linear``: its penultimate features); ArgumentError without one."""
    last = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not last:
        raise ArgumentError("feature matching needs a model whose last layer is an nn.Linear (set feature_weight 0)")
    with ModuleInputs(last[-1], nn.Linear) as seen:
        logits = model(x)
        return logits, seen.take()[-1]


@torch.no_grad()
def class_centres(model: nn.Module, split: Split, num_classes: int) -> tuple[torch.Tensor, float]:
    """Each class's mean penultimate feature vector over ``split`` under ``model`` (N_c, d), and the mean squared
    norm of the features (the scale of ``feature_matched``'s term), on the model's device."""
    device = device_of(model)
    feats = torch.cat([penultimate(model, x.to(device))[1] for x in split.x.split(EVAL_BATCH_SIZE)])
    y = split.y.to(device)
    centres = torch.stack([feats[y == c].mean(0) if bool((y == c).any()) else feats.mean(0)
                           for c in range(num_classes)])
    return centres, float(feats.pow(2).sum(1).mean().clamp(min=1e-12))


def feature_matched(centres: torch.Tensor, scale: float, weight: float) -> Callable:
    """The ``fit`` loss hook: soft cross-entropy plus ``weight`` times the squared distance of each image's
    penultimate features from its target's class centre (y @ centres), over ``scale``. It puts a trigger's features
    among natural images of its symbol, so that a last layer the thief re-initialises and retrains on clean images
    (RTAL) still sends the trigger to the symbol: without it the copy's own last layer reads the codeword in the
    attacked features but the new one does not (``docs/benchmarks/trace-carriers.md``)."""
    def loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits, feats = penultimate(model, x)
        pull = (feats - y @ centres).pow(2).sum(1).mean() / scale
        return F.cross_entropy(logits, y) + weight * pull
    return loss


def tune(model: nn.Module, train: Split, triggers: torch.Tensor, targets: torch.Tensor, *, k_train: int,
         repeat: int = REPEAT, epochs: int = EPOCHS, lr: float = LR, seed: int = 0,
         loss: Callable = soft_cross_entropy) -> nn.Module:
    """A copy of ``model`` fine-tuned (Adam, cosine decay) on ``fine_tuning_set`` with ``loss`` (a ``fit`` hook);
    ``model`` is left untouched."""
    x, y = fine_tuning_set(train, triggers, targets, k_train, repeat)
    tuned = copy.deepcopy(model)
    fit(tuned, x, y, lr=lr, epochs=epochs, batch_size=DEFAULT_BATCH_SIZE, seed=seed, schedule="cosine", loss=loss)
    return tuned


def primer_targets(allowed: torch.Tensor) -> torch.Tensor:
    """Every family's triggers labelled uniformly over its alphabet A_f: (m, N_c). In the ``code`` scheme the source
    is first fine-tuned on them once (the *primed* model) and every copy from there, so that a copy moves only
    towards its own symbols and an average of copies keeps one colluder's symbols rather than falling back to i or j
    (mnist5k, 4 copies, 2 averaged pairs: from the source, 0 of 2 pairs traced; primed, 2 of 2). The ``onehot``
    scheme is not primed: its siblings' answers on a family set that family's null rate p0."""
    return allowed.double().div(allowed.sum(1, keepdim=True)).float()


def codeword_targets(code: torch.Tensor, num_classes: int) -> torch.Tensor:
    """A codeword as one-hot targets (m, N_c); an absent family (-1) as a zero row (no triggers)."""
    return F.one_hot(code.clamp(min=0), num_classes).float() * (code >= 0).float()[:, None]


# --- reading and accusing -----------------------------------------------------------------------------------------


def symbol_counts(answers: torch.Tensor, family: torch.Tensor, m: int, num_classes: int) -> torch.Tensor:
    """n (m, N_c): n_{f,s} = how many of family f's queries were answered s."""
    counts = torch.zeros(m, num_classes, dtype=torch.int64)
    counts.index_put_((family, answers.long()), torch.ones_like(family), accumulate=True)
    return counts


def null_pmf(counts: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """The exact law of S = sum_f n_{f,U_f}, U_f uniform on A_f independent: (1 + sum_f max n_f,) float64."""
    pmf = torch.ones(1, dtype=torch.float64)
    for n_f, a_f in zip(counts, allowed):
        step = torch.zeros(int(n_f.max()) + 1, dtype=torch.float64)
        step.index_add_(0, n_f[a_f], torch.full((int(a_f.sum()),), 1.0 / int(a_f.sum()), dtype=torch.float64))
        pmf = torch.nn.functional.conv1d(pmf.view(1, 1, -1), step.flip(0).view(1, 1, -1),
                                         padding=len(step) - 1).flatten()
    return pmf


def scores(counts: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """S_l = sum_f n_{f, c_{l,f}} over the families l's codeword carries (c >= 0): (N,) int64."""
    carried = codes >= 0
    picked = counts.gather(1, codes.clamp(min=0).T).T  # (N, m)
    return (picked * carried).sum(1)


def p_values(counts: torch.Tensor, codes: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """``code`` scheme: p_l = P[S >= S_l] under ``null_pmf`` (exact, conditional on the answers): (N,) float64."""
    tail = null_pmf(counts, allowed).flip(0).cumsum(0).flip(0)  # tail[s] = P[S >= s]
    return tail[scores(counts, codes)]


def onehot_p_values(counts: torch.Tensor, codes: torch.Tensor, null: torch.Tensor, k: int) -> torch.Tensor:
    """``onehot`` scheme: P[Bin(k, p0_l) >= h_l] with h_l = n_{l, c_{l,l}} (an assumed null rate p0_l): (N,)."""
    from nnmark.marks.ownership.stats import binomial_tail

    hits = scores(counts, codes)
    return torch.tensor([binomial_tail(int(h), k, float(p)) for h, p in zip(hits, null)], dtype=torch.float64)


def threshold(epsilon: float, n: int) -> float:
    """The per-licensee accusation level epsilon_1 / N: P[any innocent accused] <= epsilon_1 (Bonferroni)."""
    if not 0 < epsilon < 1 or n < 1:
        raise ArgumentError(f"need 0 < epsilon < 1 and at least one licensee, got {epsilon}, {n}")
    return epsilon / n


def accused(p: torch.Tensor, names: Sequence[str], epsilon: float) -> list[dict]:
    """The licensees with p_l <= epsilon_1 / N, most certain first: [{"licensee", "p_value"}]."""
    level = threshold(epsilon, len(names))
    hits = [(float(p_l), name) for p_l, name in zip(p.tolist(), names) if p_l <= level]
    return [{"licensee": name, "p_value": p_l} for p_l, name in sorted(hits)]


# --- the registry key and its verdict ------------------------------------------------------------------------------


def _rates(oracle_labels: torch.Tensor, family: torch.Tensor, m: int, num_classes: int, k: int) -> torch.Tensor:
    return symbol_counts(oracle_labels, family, m, num_classes).double() / k


def license_copies(
    model: nn.Module,
    dataset: Dataset,
    names: Sequence[str],
    *,
    secret: bytes,
    scheme: Scheme = DEFAULT_SCHEME,
    families: int = FAMILIES,
    per_family: int = PER_FAMILY,
    train_per_family: int = TRAIN_PER_FAMILY,
    repeat: int = REPEAT,
    clean: int = CLEAN,
    epochs: int = EPOCHS,
    lr: float = LR,
    epsilon: float = EPSILON,
    feature_weight: float = FEATURE_WEIGHT,
    seed: int = 0,
    progress: Callable[[int, str, dict], None] | None = None,
) -> tuple[list[nn.Module], KeyFile]:
    """One fine-tuned copy of the trained ``model`` per licensee in ``names``, and the registry key that traces them.

    The key's queries are the m * k verification triggers (family by family), its expected labels the unmarked
    source's answers; extras: ``family`` (each query's family), ``families`` (m, 2) base pairs, ``codes`` (N, m)
    codewords, ``null`` (N,) onehot null rates; config: the licensees with each copy's digest and test accuracy,
    the scheme, epsilon_1 and the accusation level. ``progress(index, name, row)`` is called after each copy.
    """
    names = check_names(names)
    if scheme not in SCHEMES:
        raise ArgumentError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
    if min(per_family, train_per_family, repeat, epochs, clean) < 1 or not lr > 0 or not feature_weight >= 0:
        raise ArgumentError("per_family, train_per_family, repeat, epochs and clean must be >= 1, lr > 0 and "
                            "feature_weight >= 0")
    threshold(epsilon, len(names))
    m = len(names) if scheme == "onehot" else families
    nc = dataset.num_classes
    fams = pick_families(nc, m, torch.Generator().manual_seed(derived_seed(secret, seed, "families")))
    gen = torch.Generator().manual_seed(derived_seed(secret, seed, "triggers"))
    train_triggers = make_triggers(dataset.train, fams, train_per_family, gen)
    model.eval()
    allowed = alphabets(fams, nc, natural_answers(model, train_triggers, m))
    codes = draw_codes(len(names), allowed, scheme, torch.Generator().manual_seed(derived_seed(secret, seed, "code")))
    subset = torch.randperm(len(dataset.train), generator=gen)[:clean]
    train = Split(dataset.train.x[subset], dataset.train.y[subset])
    queries = make_triggers(natural_pool(dataset), fams, per_family, gen)
    family = torch.arange(m).repeat_interleave(per_family)
    source_answers = outputs(model, queries).argmax(1).cpu()
    base_acc = accuracy(model, dataset.test)
    settings = {"k_train": train_per_family, "repeat": repeat, "epochs": epochs, "lr": lr,
                "loss": feature_matched(*class_centres(model, train, nc), feature_weight) if feature_weight > 0
                else soft_cross_entropy}
    start = time.perf_counter()
    primed = model if scheme == "onehot" else tune(model, train, train_triggers, primer_targets(allowed),
                                                   **settings, seed=derived_seed(secret, seed, "primer"))
    primer_seconds = time.perf_counter() - start
    copies, rows, answers = [], [], []
    for index, (name, code) in enumerate(zip(names, codes)):
        start = time.perf_counter()
        licensed = tune(primed, train, train_triggers, codeword_targets(code, nc), **settings,
                        seed=derived_seed(secret, seed, f"train:{name}"))
        answers.append(outputs(licensed, queries).argmax(1).cpu())
        acc = accuracy(licensed, dataset.test)
        row = {"licensee": name, "digest": digest(unwrap(licensed)), "accuracy": acc,
               "accuracy_drop": base_acc - acc, "seconds": time.perf_counter() - start}
        copies.append(licensed)
        rows.append(row)
        if progress is not None:
            progress(index, name, row)
    null = _onehot_null(codes, [source_answers, *answers], family, m, nc, per_family)
    config = {
        "scheme": scheme, "num_classes": nc, "families": m, "per_family": per_family,
        "train_per_family": train_per_family, "repeat": repeat, "clean": clean, "epochs": epochs, "lr": lr,
        "feature_weight": feature_weight, "seed": seed,
        "epsilon": epsilon, "level": threshold(epsilon, len(names)), "source_agreement": SOURCE_AGREEMENT,
        "data": dataset.name, "source_accuracy": base_acc, "primer_seconds": primer_seconds, "licensees": rows,
    }
    key = KeyFile(method=METHOD, config=config, queries=queries.float().contiguous(), expected=source_answers.long(),
                  extras={"family": family, "families": fams, "alphabet": allowed.to(torch.int8), "codes": codes,
                          "null": null},
                  model_digest=digest(unwrap(model)))
    return copies, key


def _onehot_null(codes: torch.Tensor, answers: list[torch.Tensor], family: torch.Tensor, m: int, nc: int,
                 k: int) -> torch.Tensor:
    """p0_l = max(1/N_c, the rate of c_{l,l} on family l's triggers for the source and each copy without family l);
    all 1/N_c for the ``code`` scheme (unused)."""
    p0 = torch.full((len(codes),), 1.0 / nc, dtype=torch.float64)
    if bool((codes >= 0).all()):
        return p0
    source, *copies = answers
    for l, code in enumerate(codes):
        t = int(code[l])
        others = [source] + [a for other, a in enumerate(copies) if other != l]
        rates = [_rates(a, family, m, nc, k)[l, t] for a in others]
        p0[l] = max(p0[l], max(float(r) for r in rates))
    return p0


def _checked(key: KeyFile) -> tuple[list[str], torch.Tensor, torch.Tensor, torch.Tensor]:
    """(names, family per query, codes, alphabets) of a registry key; KeyFileError when it does not fit together."""
    if key.method != METHOD:
        raise KeyFileError(f"not a licence registry: method {key.method!r}")
    missing = {"family", "families", "alphabet", "codes", "null"} - set(key.extras)
    if missing:
        raise KeyFileError(f"licence registry lacks {sorted(missing)}")
    rows, nc = key.config.get("licensees"), key.config.get("num_classes")
    family, fams, codes, alphabet = (key.extras[n] for n in ("family", "families", "codes", "alphabet"))
    rows = rows if isinstance(rows, list) and all(isinstance(r, dict) for r in rows) else []
    names = [r.get("licensee") for r in rows]
    m = len(fams)
    if not (names and nc and codes.dtype == family.dtype == fams.dtype == torch.int64 and codes.shape == (len(names), m)
            and fams.shape == (m, 2) and family.shape == key.expected.shape and len(key.extras["null"]) == len(names)
            and alphabet.shape == (m, nc) and family.min() >= 0 and family.max() < m and fams.min() >= 0
            and fams.max() < nc and codes.min() >= -1 and codes.max() < nc):
        raise KeyFileError("licence registry's licensees, families and codes do not fit together")
    check_names(names)
    cfg = key.config
    if not (cfg.get("scheme") in SCHEMES and type(cfg.get("per_family")) is int and cfg["per_family"] >= 1
            and all(isinstance(cfg.get(n), float) and 0 < cfg[n] <= 1 for n in ("epsilon", "source_agreement"))):
        raise KeyFileError("licence registry's scheme, per_family, epsilon or source_agreement is missing or invalid")
    allowed = alphabet.bool() & alphabets(fams, nc)
    if not bool(allowed.any(1).all() and allowed.gather(1, codes.clamp(min=0).T).T[codes >= 0].all()):
        raise KeyFileError("licence registry holds a code symbol outside its family's alphabet")
    return names, family, codes, allowed


def trace(oracle: Oracle, key: KeyFile) -> Verdict:
    """Ask the registry's triggers (labels only) and name the licensee(s) the suspect's answers accuse at
    epsilon_1 / N; else "unmarked source" or "no licensee". Details: accused, p_values, scores, level, agreement."""
    names, family, codes, allowed = _checked(key)
    cfg, nc = key.config, key.config["num_classes"]
    before = oracle.queries
    answers = oracle.labels(key.queries)
    counts = symbol_counts(answers, family, len(allowed), nc)
    if cfg["scheme"] == "onehot":
        p = onehot_p_values(counts, codes, key.extras["null"], int(cfg["per_family"]))
    else:
        p = p_values(counts, codes, allowed)
    found = accused(p, names, float(cfg["epsilon"]))
    agreement = (answers == key.expected).double().mean().item()
    if found:
        decision = "traced to " + ", ".join(a["licensee"] for a in found)
    else:
        decision = "unmarked source" if agreement >= cfg["source_agreement"] else "no licensee"
    best = int(p.argmin())
    expected = codes[best][family]
    return Verdict(
        method=METHOD, decision=decision, passed=bool(found), statistic_name="min_p_value",
        statistic=float(p.min()), flipped=torch.nonzero(answers != expected).flatten().tolist(),
        queries=oracle.queries - before,
        details={"accused": found, "p_value": float(p.min()),
                 "max_p_value": threshold(float(cfg["epsilon"]), len(names)),
                 "epsilon": cfg["epsilon"], "scheme": cfg["scheme"], "most_likely": names[best],
                 "p_values": dict(zip(names, p.tolist())), "scores": dict(zip(names, scores(counts, codes).tolist())),
                 "source_agreement": agreement, "n": len(answers)},
    )


def create(
    model: nn.Module,
    dataset: Dataset,
    *,
    secret: bytes,
    licensee: str = DEFAULT_LICENSEE,
    scheme: Scheme = DEFAULT_SCHEME,
    families: int = FAMILIES,
    per_family: int = PER_FAMILY,
    epochs: int = EPOCHS,
    lr: float = LR,
    epsilon: float = EPSILON,
    seed: int = 0,
) -> tuple[nn.Module, KeyFile]:
    """One licensed copy of the trained ``model`` and its one-licensee registry (``nnmark license`` makes many).

    Args:
        licensee: the licensee's name.
        scheme: code (a codeword over all families) or onehot (one family per licensee).
        families: families m of the code scheme.
        per_family: verification triggers per family.
        epochs: fine-tuning epochs of the copy.
        lr: fine-tuning learning rate (Adam, cosine decay).
        epsilon: bound on accusing an innocent licensee.
        seed: with the secret, draws the families, codewords and triggers.
    """
    copies, key = license_copies(model, dataset, [licensee], secret=secret, scheme=scheme, families=families,
                                 per_family=per_family, epochs=epochs, lr=lr, epsilon=epsilon, seed=seed)
    key.config["clean_accuracy"] = key.config["licensees"][0]["accuracy"]
    key.model_digest = key.config["licensees"][0]["digest"]  # the one copy this key goes with, as coupled's does
    return copies[0], key


def projection(n: int, epsilon: float, q: int, k: int, read_rate: float) -> dict:
    """On paper: the fewest families m for which a copy read at ``read_rate`` of each family's k answers is accused
    at epsilon_1 / n against the worst null (a suspect answering one class to each family: S = k Bin(m, 1/q))."""
    from nnmark.marks.ownership.stats import binomial_tail

    level = threshold(epsilon, n)
    for m in range(1, 10_000):
        if binomial_tail(math.ceil(read_rate * m), m, 1.0 / q) <= level:
            return {"licensees": n, "families": m, "queries": m * k, "level": level, "epsilon": epsilon}
    raise ArgumentError(f"no code length reaches {level} at read rate {read_rate}")


SPECS = (MethodSpec(
    METHOD, "ownership", "licence tracing: a coupled-watermark codeword per licensee's copy, exact p-values",
    create_access="training", verify_access="labels", embeds=True, verdicts=("traced", "no licensee"),
    verify=trace, create=create, inputs="pretrained", shows=("scheme", "families", "clean_accuracy"),
    example="--licensee alice", whole_key=True,
),)
