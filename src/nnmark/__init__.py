"""nnmark: query samples that protect trained neural networks.

nnmark answers three questions about a model you shipped: *is it intact?* (integrity), *is it mine?*
(ownership) and *what runs it?* (telltale). It does so in three steps, each one call here:

1. **Mark**: make a key of query samples from your model with one method (``nnmark.marks.METHODS``
   lists them with their purpose and the access they need)::

       key = nnmark.mark("dbi", model, x)                     # x: (N, C, H, W) images in [0, 1]

2. **Keep**: sign the key and write it; load it back, signature checked, before anything runs::

       nnmark.save_key(key, "dbi.key", secret=secret)
       key = nnmark.load_key("dbi.key", secret=secret)

3. **Verify**: ask a suspect the key's queries: a module, a checkpoint file, or an endpoint URL::

       verdict = nnmark.verify(key, "http://127.0.0.1:8000", secret=secret)
       verdict.passed, verdict.decision                        # True, "intact"

To test a key, change the model as an adversary would (``nnmark.attacks.ATTACKS`` lists the attacks)::

    suspect = nnmark.attack("finetune", model, x_attacker, y_attacker, lr=1e-4, steps=100)
    nnmark.verify(key, suspect).decision                        # "tampered"

Each call takes ``device=`` ("cpu", the default; "cuda", "cuda:N", "mps", or "auto": the first accelerator) for
the model it runs; keys and returned models are on the CPU whatever the device, and a key records the
environment it was made in (device, dtype, backend flags), which ``verify`` compares with its own::

    key = nnmark.mark("dbi", model, x, device="auto")
    nnmark.verify(key, model).details["environment"]   # where the key was made and what differs here

The configured calls take the method's settings and an oracle you build yourself (a budget, an access
level, an execution environment)::

    key = nnmark.mark("pairs", model, n_pairs=150, secret=secret, user_id="alice", margin=1e-4)
    verdict = nnmark.verify(key, LabelsOracle(TorchOracle(model, (1, 28, 28)), budget=1_000))

Methods that train shadow models or the model itself (MetaFinger, the watermarks, iNNformant's
environments) are called from their modules (``nnmark.marks.ownership.metafinger.create`` ...).
Nothing here imports torch until it is called.
"""

from __future__ import annotations

import contextlib
import os

__version__ = "0.1.0"

ORACLE_INPUTS = ("samples", "natural", "none")
"""The input kinds (``nnmark.marks.spec.INPUTS``) of the methods ``mark`` makes from a model alone: their create
step takes an oracle and images (or only the oracle, for "none")."""


URL_SCHEMES = ("http://", "https://", "grpc://")
"""A suspect given as a string with one of these prefixes is an endpoint; any other string is a model source."""


@contextlib.contextmanager
def _oracle(target, input_shape=None, card=None, device="cpu", batch_size=None):
    """Yield (oracle, model digest or "") for ``target``: an oracle as it is; an ``nn.Module``; an endpoint URL or an
    ``EndpointSpec``; a model file or ``package.module:factory`` or a ``ModelSource``, opened as the command line
    opens its suspect (``nnmark.suspect.open_suspect``; ``card``: a key's model card). A module or a model file runs
    on ``device`` (``envs.resolve_device``) in micro-batches of ``batch_size`` (None: each call in one batch); an
    oracle or an endpoint runs where it is. What this opens it closes."""
    from nnmark import models
    from nnmark.envs import resolve_device
    from nnmark.errors import ArgumentError
    from nnmark.oracles import EndpointSpec, Oracle, TorchOracle
    from nnmark.suspect import ModelSource, open_suspect

    device = resolve_device(device)
    if isinstance(target, (str, os.PathLike)):
        text = os.fspath(target)
        target = EndpointSpec(text) if text.startswith(URL_SCHEMES) else ModelSource(text)
    if device != "cpu" and isinstance(target, (Oracle, EndpointSpec)):
        raise ArgumentError(f"device={device!r} is for a module or a model file; an oracle or an endpoint runs where "
                            "it is")
    if isinstance(target, Oracle):
        yield target, ""
        return
    if isinstance(target, (ModelSource, EndpointSpec)):
        with open_suspect(target, card=card, device=device, batch_size=batch_size) as (oracle, loaded):
            yield oracle, loaded.digest if loaded is not None else ""
        return
    if input_shape is None:
        from nnmark.errors import ArgumentError

        raise ArgumentError("an nn.Module needs input_shape=(C, H, W) (or pass a TorchOracle)")
    with TorchOracle(target, input_shape, device=device, batch_size=batch_size) as oracle:
        yield oracle, models.digest(target)


def mark(method: str, model, x=None, *, device: str = "cpu", batch_size: int | None = None, **settings):
    """A key of ``method`` made from ``model`` (a module, a file or an oracle) and the images ``x``.

    ``settings`` go to the method's create step (e.g. ``itr`` for dbi; ``n``, ``seed`` for random;
    ``n_pairs``, ``secret``, ``user_id`` for pairs). The key records the model's digest when ``model`` is
    a module or a file, and the environment it was made in (``nnmark.envs.record``: ``device``, dtype, flags).
    ``batch_size``: a module or file runs in micro-batches of that many queries (peak memory follows it, not the
    number of queries); the key records it, and ``verify`` asks in the same micro-batches.
    """
    from nnmark import envs
    from nnmark.errors import ArgumentError
    from nnmark.marks import METHODS

    spec = METHODS.get(method)
    if spec is None or spec.inputs not in ORACLE_INPUTS:
        made = [name for name, s in METHODS.items() if s.inputs in ORACLE_INPUTS]
        raise ArgumentError(f"nnmark.mark makes {', '.join(made)}; make a {method} key with its module "
                            "in nnmark.marks (it trains shadow models or the model itself)")
    if spec.inputs != "none" and x is None:
        raise ArgumentError(f"{method} keys are made from images: pass x (N, C, H, W) in [0, 1]")
    shape = tuple(x.shape[1:]) if x is not None else settings.pop("input_shape", None)
    with _oracle(model, shape, device=device, batch_size=batch_size) as (oracle, digest):
        settings.setdefault("model_digest", digest)
        key = envs.stamp(spec.create(oracle, *(() if spec.inputs == "none" else (x,)), **settings), oracle)
    if getattr(oracle, "batch_size", None):
        key.config["batch_size"] = oracle.batch_size
    return key


def verify(key, suspect, *, secret: bytes | None = None, input_shape=None, device: str = "cpu",
           batch_size: int | None = None, accept_environment: bool = False):
    """The verdict of asking ``suspect`` the key's queries: a module, a model file or ``package.module:factory``
    (or a ``nnmark.suspect.ModelSource``: with weights, input shape, normalisation), run on ``device`` in
    micro-batches of ``batch_size`` (default: the key's own), an endpoint URL (or an ``EndpointSpec``) or an oracle;
    a file or factory takes what its source does not say from the key's model card. An integrity key made in
    another environment that the change alone could fail raises ``EnvironmentMismatch`` unless
    ``accept_environment`` (``nnmark.envs.check_environment``)."""
    from nnmark import keyinfo, marks

    batch_size = batch_size or key.config.get("batch_size")
    with _oracle(suspect, input_shape or tuple(key.queries.shape[1:]), keyinfo.card_of(key), device,
                 batch_size) as (oracle, _):
        return marks.verify(oracle, key, secret=secret, accept_environment=accept_environment)


def attack(name: str, model, *data, device: str = "cpu", **options):
    """``model`` changed by the registered attack ``name`` (``nnmark.attacks.ATTACKS``): a new model (an attack that
    reports, e.g. a thief's: the pair (model, report), the copy's accuracy on a ``test=`` split in it), the input left
    untouched; ``data`` as the attack's kind needs (e.g. attacker images and labels), ``options`` its parameters.
    The attack runs on ``device`` (a copy of ``model`` is moved there); the new model comes back on the CPU."""
    import copy

    from nnmark.attacks import ATTACKS
    from nnmark.envs import resolve_device
    from nnmark.errors import ArgumentError

    if name not in ATTACKS:
        raise ArgumentError(f"unknown attack {name!r}; registered: {', '.join(ATTACKS)}")
    device = resolve_device(device)
    if device == "cpu":
        return ATTACKS[name](model, *data, **options)
    result = ATTACKS[name](copy.deepcopy(model).to(device), *data, **options)
    return (result[0].cpu(), *result[1:]) if isinstance(result, tuple) else result.cpu()


def save_key(key, path, *, secret: bytes | None):
    """Sign ``key`` with ``secret`` (None: unsigned) and write it atomically to ``path``."""
    from nnmark import keys

    keys.save(key, path, secret=secret)


def load_key(path, *, secret: bytes | None, allow_unsigned: bool = False):
    """The key at ``path``, its signature and contents checked before anything runs."""
    from nnmark import keys

    return keys.load(path, secret=secret, allow_unsigned=allow_unsigned)


__all__ = ["__version__", "attack", "load_key", "mark", "save_key", "verify"]
