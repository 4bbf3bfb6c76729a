"""Boundary families for licence tracing: a codeword bit carried on natural images near the source's decision boundary,
where a copy distilled or extracted on the thief's own clean data still learns it.

A trigger family (``licensing``) lives far from the data, so a student trained on clean images never sees it. A
*boundary family* is a region of natural images the unmarked source finds ambiguous between two classes a < b (its
top two, with p_1 - p_2 < ``MARGIN``), cut into 2^``BITS`` parts by the signs of ``BITS`` smooth random pixel
projections drawn from the owner's secret (each sign against the pair's median, so the parts are balanced). Its
alphabet is {a, b}: copy l is fine-tuned to lean towards c_{l,f} on the region's training images, the pair's
probability mass p_a + p_b split ``SHIFT`` : 1 - ``SHIFT`` (soft, so that images farther from the boundary keep
their answer and the copy its accuracy). A trace asks the k pool images of each region that the source finds most
ambiguous. Natural images of the region sit in any thief's data, so distillation and label extraction copy the lean.

Measured (Fashion-MNIST LeNet-5, one copy, 25 regions, k = 4): the source reads 43% of a code's symbols, the copy
79%, its distilled and label-extracted students 63-64% (the whole pair as one region, 11 families: 93%, 77%, 70%).

Example::

    regions = find_regions(model, train_x, pool_x, secret_gen, k=4, limit=20)
    targets = shift_targets(model, train_x[regions.train_index], regions, symbols)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

MARGIN = 0.3
"""p_1 - p_2 below which the source finds an image ambiguous between its top two classes."""
BITS = 2
"""Random projections per pair: 2^BITS regions."""
SHIFT = 0.7
"""The share of p_a + p_b a copy's training target gives its symbol on the region's images (0.5: neutral)."""
MIN_TRAIN = 30
"""Fewest training images a region needs to be taught."""
SMOOTHING = 7
"""Side of the box filter that smooths the random projections (so that a region is a smooth part of image space)."""


@dataclass
class Regions:
    """The boundary families found: ``pairs`` (m, 2) int64 (a < b); ``train_index``/``train_family``: the training
    images in a family and which; ``pool_index`` (m * k,): the query images from the pool, family by family."""

    pairs: torch.Tensor
    train_index: torch.Tensor
    train_family: torch.Tensor
    pool_index: torch.Tensor


@torch.no_grad()
def top_two(model: nn.Module, x: torch.Tensor, batch_size: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """(pair (N, 2) int64, its two classes in ascending order; margin p_1 - p_2 (N,)) of ``model`` on ``x``."""
    probs = torch.cat([model(b).softmax(1) for b in x.split(batch_size)])
    top = probs.topk(2, 1)
    return top.indices.sort(1).values, top.values[:, 0] - top.values[:, 1]


def _parts(x: torch.Tensor, pair_code: torch.Tensor, directions: torch.Tensor, medians: dict) -> torch.Tensor:
    """Each image's part 0 .. 2^BITS - 1 of its pair's region: the signs of its projections against the pair's
    medians (``medians``: pair code -> BITS values; a pair without training images cuts at 0)."""
    proj = x.flatten(1) @ directions.flatten(1).T
    part = torch.zeros(len(x), dtype=torch.int64)
    for j in range(len(directions)):
        cut = torch.tensor([medians.get(p, (0.0,) * len(directions))[j] for p in pair_code.tolist()])
        part = part * 2 + (proj[:, j] > cut).long()
    return part


def _directions(shape: torch.Size, generator: torch.Generator) -> torch.Tensor:
    """``BITS`` smooth random directions in image space (BITS, C, H, W)."""
    noise = torch.randn(BITS, *shape, generator=generator)
    return F.avg_pool2d(noise, SMOOTHING, stride=1, padding=SMOOTHING // 2)


def _keys(pair: torch.Tensor, part: torch.Tensor) -> list[tuple[int, int, int]]:
    return [(a, b, p) for (a, b), p in zip(pair.tolist(), part.tolist())]


def find_regions(model: nn.Module, train_x: torch.Tensor, pool_x: torch.Tensor, generator: torch.Generator, *,
                 k: int, limit: int) -> Regions:
    """Up to ``limit`` boundary families of ``model``, the most populated first: each with >= ``MIN_TRAIN``
    ambiguous training images and >= k ambiguous pool images (its k most ambiguous are the queries)."""
    model.eval()
    directions = _directions(train_x.shape[1:], generator)
    t_pair, t_margin = top_two(model, train_x)
    p_pair, p_margin = top_two(model, pool_x)
    t_amb, p_amb = torch.nonzero(t_margin < MARGIN).flatten(), torch.nonzero(p_margin < MARGIN).flatten()
    t_code, p_code = _code(t_pair[t_amb]), _code(p_pair[p_amb])
    proj = train_x[t_amb].flatten(1) @ directions.flatten(1).T
    medians = {int(c): proj[t_code == c].median(0).values.tolist() for c in t_code.unique()}
    t_key = _keys(t_pair[t_amb], _parts(train_x[t_amb], t_code, directions, medians))
    p_key = _keys(p_pair[p_amb], _parts(pool_x[p_amb], p_code, directions, medians))
    count = {key: t_key.count(key) for key in set(t_key)}
    chosen = [key for key in sorted(count, key=lambda c: (-count[c], c))
              if count[key] >= MIN_TRAIN and p_key.count(key) >= k][:limit]
    index = {key: f for f, key in enumerate(chosen)}
    t_fam = torch.tensor([index.get(key, -1) for key in t_key], dtype=torch.int64)
    p_fam = torch.tensor([index.get(key, -1) for key in p_key], dtype=torch.int64)
    queries = []
    for f in range(len(chosen)):
        members = p_amb[p_fam == f]
        queries.append(members[p_margin[members].argsort()[:k]])
    return Regions(
        pairs=torch.tensor([key[:2] for key in chosen], dtype=torch.int64).view(-1, 2),
        train_index=t_amb[t_fam >= 0], train_family=t_fam[t_fam >= 0],
        pool_index=torch.cat(queries) if queries else torch.zeros(0, dtype=torch.int64))


def _code(pair: torch.Tensor) -> torch.Tensor:
    """A pair (a, b) as one integer a * 1000 + b (the medians' key)."""
    return pair[:, 0] * 1000 + pair[:, 1]


@torch.no_grad()
def shift_targets(model: nn.Module, x: torch.Tensor, family: torch.Tensor, pairs: torch.Tensor,
                  symbols: torch.Tensor, shift: float = SHIFT) -> torch.Tensor:
    """Soft targets (N, N_c) for the region images ``x`` of families ``family``: ``model``'s probabilities with the
    pair's mass p_a + p_b split ``shift`` to the family's symbol (``symbols`` (m,), a class of the pair) and the
    rest to the other class."""
    probs = torch.cat([model(b).softmax(1) for b in x.split(1000)])
    mine = symbols[family]
    other = pairs[family].sum(1) - mine
    rows = torch.arange(len(x))
    mass = probs[rows, mine] + probs[rows, other]
    probs[rows, mine] = mass * shift
    probs[rows, other] = mass * (1 - shift)
    return probs
