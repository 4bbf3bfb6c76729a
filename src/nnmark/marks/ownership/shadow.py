"""Shadow-model pools: models trained or derived on the owner's side, cached on disk, built in parallel.

MetaFinger (Yang et al., IJCAI 2022, sec. 4.1 "meta-data generation") needs many shadow models:

- a *negative* model is trained from scratch on the same task with its own seed
  (``ShadowSpec(arch, data, seed)``);
- an *augmented* model is a base model plus eq. 1 noise, param += N(0, std(param) / alpha) layer by
  layer (``nnmark.attacks.relative_weight_noise``), then fine-tuned to recover accuracy
  (``ShadowSpec(..., augment_alpha=alpha, augment_seed=s)``). The base is the negative model of the same
  (arch, data, seed, epochs), or, when ``base_digest`` is set, a model given by the caller (the owner's
  source model, never trained here), identified by its ``nnmark.models.digest``.

Choices: the fine-tune after the noise is ``finetune_mode(..., mode="FTAL")`` (SGD, momentum 0.9,
lr 0.01, all layers) for ``finetune_epochs`` passes over the *owner's* training split of ``data``
(the owner has it; the paper only says "fine-tunes the model to achieve high accuracy"). A
from-scratch model is ``models.build`` under ``torch.manual_seed(seed)`` then ``models.train(...,
seed=seed)``, so a spec gives the same weights every time on one machine.

Each model is cached as ``<cache_dir>/<arch>-<hash>.safetensors`` (``nnmark.models.save``) with a
``.json`` beside it (the spec, test accuracy, seconds); ``hash`` is the SHA-256 of the spec's
canonical JSON, so a second ``build_pool`` over the same specs trains nothing. Missing models are
built in worker processes (``concurrent.futures.ProcessPoolExecutor``, spawn context, one torch
thread each): from-scratch bases first, then the augmentations that start from them. Only JSON
strings and file paths cross process boundaries; models travel as safetensors files.
``executor="ray"`` runs them as Ray tasks instead (``pip install 'nnmark[ray]'``, imported only then).
``pool_specs`` lays out
MetaFinger's positive and negative pools.

Example::

    specs = [ShadowSpec("lenet5", "digits", seed=s) for s in (1, 2)]
    pool = build_pool(specs, cache_dir=default_cache_dir(), workers=2)
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import multiprocessing
import os
import re
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch import nn
from tqdm.auto import tqdm

from nnmark import data, models
from nnmark._io import atomic_write_bytes
from nnmark.attacks import finetune_mode, relative_weight_noise
from nnmark.errors import ModelError, NnmarkError

DEFAULT_EPOCHS = 8
DEFAULT_FINETUNE_EPOCHS = 2
EXECUTORS = ("process", "serial", "ray")
DEFAULT_NEGATIVES = 4
DEFAULT_VAL_NEGATIVES = 2
DEFAULT_AF = 3
DEFAULT_ALPHA = 3.0

Runner = Callable[[list[tuple[str, str, str | None]]], Iterator[str]]


@dataclass(frozen=True)
class ShadowSpec:
    """One shadow model, as JSON-able fields.

    Args:
        arch: a ``nnmark.models.ARCHITECTURES`` name.
        data: a ``nnmark.data.load`` spec; the task (and the owner's fine-tuning data).
        seed: from-scratch seed (initialisation and minibatch order); with ``base_digest`` a label only.
        augment_alpha: eq. 1's alpha (> 0) for an augmented model; None for a from-scratch one.
        augment_seed: seeds the eq. 1 noise and the fine-tune; set exactly when ``augment_alpha`` is.
        epochs: from-scratch training epochs.
        finetune_epochs: FTAL epochs after the noise.
        base_digest: None (augment the from-scratch model of this spec) or the digest of a given base model.
    """

    arch: str
    data: str
    seed: int
    augment_alpha: float | None = None
    augment_seed: int | None = None
    epochs: int = DEFAULT_EPOCHS
    finetune_epochs: int = DEFAULT_FINETUNE_EPOCHS
    base_digest: str | None = None

    def __post_init__(self) -> None:
        if self.arch not in models.ARCHITECTURES:
            raise ModelError(f"unknown architecture {self.arch!r}; choose one of {', '.join(models.ARCHITECTURES)}")
        if not isinstance(self.data, str) or not self.data:
            raise ValueError(f"data must be a dataset spec string, got {self.data!r}")
        for name in ("seed", "epochs", "finetune_epochs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an integer, got {value!r}")
        if self.epochs < 1 or self.finetune_epochs < 0:
            raise ValueError(f"need epochs >= 1 and finetune_epochs >= 0, got {self.epochs}, {self.finetune_epochs}")
        if (self.augment_alpha is None) != (self.augment_seed is None):
            raise ValueError("augment_alpha and augment_seed must be given together")
        if self.augment_alpha is not None:
            alpha = self.augment_alpha
            numeric = isinstance(alpha, (int, float)) and not isinstance(alpha, bool)
            if not (numeric and math.isfinite(alpha) and alpha > 0):
                raise ValueError(f"augment_alpha must be a finite number > 0, got {alpha!r}")
            object.__setattr__(self, "augment_alpha", float(alpha))
            if isinstance(self.augment_seed, bool) or not isinstance(self.augment_seed, int):
                raise ValueError(f"augment_seed must be an integer, got {self.augment_seed!r}")
        if self.base_digest is not None:
            if self.augment_alpha is None:
                raise ValueError("base_digest is only meaningful for an augmented spec (a given model is not trained)")
            if not (isinstance(self.base_digest, str) and re.fullmatch(r"[0-9a-f]{64}", self.base_digest)):
                raise ValueError(f"base_digest must be 64 lowercase hex digits, got {self.base_digest!r}")

    @property
    def augmented(self) -> bool:
        return self.augment_alpha is not None

    def base(self) -> ShadowSpec:
        """The from-scratch spec this one augments (only for specs without ``base_digest``)."""
        return dataclasses.replace(self, augment_alpha=None, augment_seed=None, base_digest=None)

    def to_json(self) -> str:
        """Canonical JSON (sorted keys, compact)."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> ShadowSpec:
        return cls(**json.loads(text))

    def cache_name(self) -> str:
        """``<arch>-<first 16 hex of SHA-256(to_json())>.safetensors``."""
        return f"{self.arch}-{hashlib.sha256(self.to_json().encode()).hexdigest()[:16]}.safetensors"


def pool_specs(
    arch: str,
    data: str,
    source_digest: str,
    *,
    negatives: int = DEFAULT_NEGATIVES,
    val_negatives: int = DEFAULT_VAL_NEGATIVES,
    af: int = DEFAULT_AF,
    alpha: float = DEFAULT_ALPHA,
    seed: int = 0,
    epochs: int = DEFAULT_EPOCHS,
    finetune_epochs: int = DEFAULT_FINETUNE_EPOCHS,
) -> dict[str, list[ShadowSpec]]:
    """MetaFinger's meta-data (sec. 4.1) as specs, keyed by ``nnmark.marks.ownership.metafinger.POOLS``.

    Positives: ``af`` augmentations (eq. 1 at ``alpha``, then fine-tune) of the source (``source_digest``);
    a third of them, rounded, validate. Negatives: ``negatives`` train families (a from-scratch model of
    seed ``seed + j``, j = 1.., and its ``af`` augmentations) and ``val_negatives`` validation models
    trained from scratch with the next seeds, un-augmented so that they are independent of each other
    (MetaFinger's leave-one-out null needs that). Pass the source's training seed as ``seed``: no negative
    then repeats it. The source is not listed: ``metafinger.create`` adds it to both positive pools.
    Defaults: 4 families, 2 validation negatives, AF 3, alpha 3 (the paper gives no alpha; at 3 LeNet-5
    loses about a third of its accuracy before the fine-tune restores it).
    """
    if negatives < 1 or val_negatives < 1 or af < 0:
        raise ValueError(f"need negatives >= 1, val_negatives >= 1 and af >= 0, got {negatives}, {val_negatives}, {af}")
    common = {"epochs": epochs, "finetune_epochs": finetune_epochs}
    positives = [ShadowSpec(arch, data, seed, alpha, i, base_digest=source_digest, **common) for i in range(af)]
    n_pos_val = round(af / 3)
    families = [seed + j for j in range(1, negatives + 1)]
    neg_train = [ShadowSpec(arch, data, s, **common) for s in families]
    neg_train += [ShadowSpec(arch, data, s, alpha, 1000 * j + i, **common)
                  for j, s in enumerate(families, start=1) for i in range(af)]
    neg_val = [ShadowSpec(arch, data, seed + negatives + j, **common) for j in range(1, val_negatives + 1)]
    return {"positives_train": positives[: af - n_pos_val], "negatives_train": neg_train,
            "positives_val": positives[af - n_pos_val:], "negatives_val": neg_val}


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/nnmark/shadow``, else ``~/.cache/nnmark/shadow``."""
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "nnmark" / "shadow"


def _dataset(spec: ShadowSpec) -> data.Dataset:
    return data.load(spec.data)


def _train_scratch(spec: ShadowSpec, ds: data.Dataset) -> nn.Module:
    """A negative model: built under ``torch.manual_seed(seed)`` and trained with ``seed`` (global RNG restored)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        model = models.build(spec.arch, ds.shape, ds.num_classes)
    return models.train(model, ds.train, epochs=spec.epochs, seed=spec.seed)


def _augment(spec: ShadowSpec, base: nn.Module, ds: data.Dataset) -> nn.Module:
    """DNN augmentation: eq. 1 noise on ``base`` (a copy), then FTAL on the owner's training split."""
    noisy = relative_weight_noise(base, spec.augment_alpha, seed=spec.augment_seed)
    return finetune_mode(noisy, ds.train.x, ds.train.y, mode="FTAL", epochs=spec.finetune_epochs,
                         seed=spec.augment_seed)


def train_shadow(spec: ShadowSpec, base: nn.Module | None = None) -> nn.Module:
    """Train (or derive) the model ``spec`` describes; returns it in eval mode.

    ``base``: for an augmented spec, the model to augment; required when ``spec.base_digest`` is set (and
    its digest must match), optional otherwise (the from-scratch base is trained when omitted).
    """
    ds = _dataset(spec)
    if not spec.augmented:
        if base is not None:
            raise ValueError("a from-scratch spec takes no base model")
        return _train_scratch(spec, ds)
    if spec.base_digest is not None:
        if base is None:
            raise ValueError("this spec augments a given model (base_digest): pass it as base")
        if models.digest(base) != spec.base_digest:
            raise ModelError("the base model's digest differs from the spec's base_digest")
    elif base is None:
        base = _train_scratch(spec.base(), ds)
    return _augment(spec, base, ds)


def _config(spec: ShadowSpec, ds: data.Dataset, accuracy: float | None) -> models.ModelConfig:
    return models.ModelConfig(spec.arch, ds.shape, ds.num_classes, data=spec.data, accuracy=accuracy, seed=spec.seed)


def _build_and_cache(spec_json: str, path: str, base_path: str | None) -> str:
    """Worker task: build one spec (its base read from ``base_path``), save it to ``path``; return a JSON record."""
    start = time.perf_counter()
    spec = ShadowSpec.from_json(spec_json)
    base = models.load(base_path)[0] if base_path is not None else None
    model = train_shadow(spec, base)
    ds = _dataset(spec)
    acc = models.accuracy(model, ds.test)
    models.save(model, _config(spec, ds, acc), path)
    record = json.dumps({"spec": json.loads(spec_json), "test_accuracy": acc, "seconds": time.perf_counter() - start},
                        sort_keys=True)
    atomic_write_bytes(Path(path).with_suffix(".json"), record.encode())
    return record


def _init_worker() -> None:
    torch.set_num_threads(1)


@dataclass
class ShadowPool:
    """Built shadow models, in the order of ``specs``.

    Attributes:
        specs: the requested specs; models: the models (eval mode); paths: their cache files;
        trained: the specs built on this call (implied from-scratch bases included), empty when all were cached;
        seconds: wall time of the call.
    """

    specs: list[ShadowSpec]
    models: list[nn.Module]
    paths: list[Path]
    trained: list[ShadowSpec]
    seconds: float

    def __len__(self) -> int:
        return len(self.models)

    def __getitem__(self, i: int) -> nn.Module:
        return self.models[i]

    def select(self, specs: list[ShadowSpec]) -> list[nn.Module]:
        """The models of ``specs`` (each must be in this pool)."""
        index = {s: i for i, s in enumerate(self.specs)}
        return [self.models[index[s]] for s in specs]


def _ray_results(ray, refs: list) -> Iterator[str]:
    """The results of Ray task ``refs`` as each finishes."""
    while refs:
        done, refs = ray.wait(refs, num_returns=1)
        yield ray.get(done[0])


@contextlib.contextmanager
def _runner(executor: str, workers: int, ray_address: str | None, tasks: int) -> Iterator[Runner]:
    """A function that runs ``_build_and_cache`` over a batch of tasks and yields each result as it finishes."""
    if executor == "serial" or tasks == 0:
        yield lambda batch: (_build_and_cache(*t) for t in batch)
    elif executor == "process":
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(workers, tasks), mp_context=ctx, initializer=_init_worker) as pool:
            yield lambda batch: (f.result() for f in as_completed([pool.submit(_build_and_cache, *t) for t in batch]))
    else:
        try:
            import ray
        except ModuleNotFoundError:
            raise NnmarkError("executor 'ray' needs Ray: pip install 'nnmark[ray]'") from None
        started = not ray.is_initialized()
        if started:
            ray.init(address=ray_address)
        try:
            remote = ray.remote(num_cpus=1)(_build_and_cache)
            yield lambda batch: _ray_results(ray, [remote.remote(*t) for t in batch])
        finally:
            if started:
                ray.shutdown()


def build_pool(
    specs: list[ShadowSpec],
    *,
    cache_dir: str | os.PathLike,
    base: nn.Module | None = None,
    workers: int = 2,
    executor: str = "process",
    ray_address: str | None = None,
    progress: bool = False,
) -> ShadowPool:
    """Load every spec from ``cache_dir``, building the missing ones first (in parallel); see the module docstring.

    Args:
        specs: the models wanted (duplicates allowed).
        cache_dir: folder of the cache (created if missing).
        base: the given model that specs with ``base_digest`` augment (the owner's source model).
        workers: worker processes for ``executor="process"``.
        executor: "process" (spawned workers, one torch thread each), "serial" (this process) or "ray"
            (one-CPU Ray tasks on the running Ray instance, else on ``ray.init(address=ray_address)``, shut
            down afterwards; on a multi-machine cluster ``cache_dir`` must be a file system all nodes share).
        ray_address: the Ray cluster to connect to when none is initialised (None: start a local one).
        progress: show a tqdm bar over the models built.
    """
    if executor not in EXECUTORS:
        raise ValueError(f"executor must be one of {', '.join(EXECUTORS)}, got {executor!r}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    start = time.perf_counter()
    cache = Path(cache_dir).expanduser()
    cache.mkdir(parents=True, exist_ok=True)
    digest = models.digest(base) if base is not None else None
    for s in specs:
        if s.base_digest is not None and s.base_digest != digest:
            raise ModelError(f"spec {s.to_json()} augments a model with digest {s.base_digest[:12]}..., "
                             f"which is not the given base")
    missing = list(dict.fromkeys(s for s in specs if not (cache / s.cache_name()).exists()))
    scratch = [s for s in missing if not s.augmented]
    scratch += [b for b in dict.fromkeys(s.base() for s in missing if s.augmented and s.base_digest is None)
                if b not in scratch and not (cache / b.cache_name()).exists()]
    augmented = [s for s in missing if s.augmented]
    bar = tqdm(total=len(scratch) + len(augmented), desc="shadow models", unit="model", disable=not progress)
    work = _runner(executor, workers, ray_address, len(scratch) + len(augmented))
    with bar, work as run, tempfile.TemporaryDirectory(dir=cache, prefix=".base-") as tmp:
        for _ in run([(s.to_json(), str(cache / s.cache_name()), None) for s in scratch]):
            bar.update()
        base_path = None
        given = [s for s in augmented if s.base_digest is not None]
        if given:  # the given base travels to the workers as a safetensors file, removed afterwards
            base_path = str(Path(tmp) / "base.safetensors")
            models.save(base, _config(given[0], _dataset(given[0]), None), base_path)
        tasks = [(s.to_json(), str(cache / s.cache_name()),
                  base_path if s.base_digest is not None else str(cache / s.base().cache_name())) for s in augmented]
        for _ in run(tasks):
            bar.update()
    paths = [cache / s.cache_name() for s in specs]
    return ShadowPool(list(specs), [models.load(p)[0] for p in paths], paths, scratch + augmented,
                      time.perf_counter() - start)
