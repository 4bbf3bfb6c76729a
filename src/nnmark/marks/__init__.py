"""Marks: one module per paper method and per baseline, each with ``create`` (or ``embed``) and ``verify``.

Each module declares its methods as ``SPECS`` (``nnmark.marks.spec.MethodSpec``: purpose, access for
create and verify, whether it embeds, its verdict words, its create function and input kind); ``METHODS``
collects them from every module of the purpose packages.
``verify(oracle, key, secret=...)`` checks the declared access once and picks the method's verifier from
the key's method name; keyed methods (sensitive-sample pairs) re-derive their secret per-user head from
the owner's secret.
"""

from __future__ import annotations

import importlib
import pkgutil

from nnmark import keys
from nnmark.errors import KeyFileError, SignatureError
from nnmark.keys import KeyFile
from nnmark.marks import canary
from nnmark.marks.spec import PURPOSES, MethodSpec, require
from nnmark.marks.verdict import Verdict
from nnmark.oracles import Oracle


def _declared() -> dict[str, MethodSpec]:
    """The ``SPECS`` of every module in the purpose packages (``integrity``, ``ownership``, ``telltale``), by
    purpose, then module name: a new method's module is found without being listed anywhere else."""
    found: dict[str, MethodSpec] = {}
    for purpose in PURPOSES:
        package = importlib.import_module(f"{__name__}.{purpose}")
        for info in pkgutil.iter_modules(package.__path__):
            for spec in getattr(importlib.import_module(f"{package.__name__}.{info.name}"), "SPECS", ()):
                if spec.name in found:
                    raise TypeError(f"method {spec.name!r} is declared twice")
                found[spec.name] = spec
    return found


METHODS: dict[str, MethodSpec] = _declared()
"""Method name -> its declaration, in the order listings show them."""


def spec_of(key: KeyFile) -> MethodSpec:
    """The declaration of the key's method (KeyFileError for a method this nnmark does not know)."""
    try:
        return METHODS[key.method]
    except KeyError:
        raise KeyFileError(f"key file method {key.method!r} is not known to this nnmark") from None


def verify(oracle: Oracle, key: KeyFile, *, secret: bytes | None = None, preflight: bool = True,
           accept_environment: bool = False) -> Verdict:
    """Ask ``oracle`` the key's canaries (``canary.preflight``: ``EndpointMismatch`` when an endpoint answers as
    the keyed model does under a known misreading), then its queries, and decide with the key's method; keyed
    methods need ``secret``. A model that fits no reading gets the method's verdict; the preflight's one-line
    note is ``verdict.details["preflight"]``. ``preflight`` False: the caller asked the canaries of the whole key
    already (the audit, which verifies a key's queries a batch at a time).

    The environment the key was made in is compared with the oracle's (``envs.check_environment``, noted as
    ``verdict.details["environment"]``): a failed integrity key that the change of environment alone could fail
    raises ``EnvironmentMismatch`` unless ``accept_environment``.

    KeyFileError when the key expects a label the model cannot give (outside [0, K)).
    """
    from nnmark import envs

    spec = spec_of(key)
    require(oracle, spec.verify_access, f"verifying a {spec.name} key")
    if int(key.expected.max()) >= oracle.num_classes:
        raise KeyFileError(f"the key expects label {int(key.expected.max())}; the model has {oracle.num_classes} "
                           "classes, so the key cannot be for it")
    if spec.keyed and secret is None:
        raise SignatureError(f"{key.method} keys need the owner's secret to verify "
                             f"(--secret-file or {keys.SECRET_ENV})")

    def decide(asked: Oracle) -> Verdict:
        return spec.verify(asked, key, secret=secret) if spec.keyed else spec.verify(asked, key)

    note = canary.preflight(oracle, key) if preflight else None
    verdict = decide(oracle)
    if note is not None:
        verdict.details["preflight"] = note
    environment = envs.check_environment(oracle, key, verdict, fragile=spec.purpose == "integrity",
                                         accept=accept_environment, reverify=decide)
    if environment is not None:
        verdict.details["environment"] = environment
    return verdict


__all__ = ["METHODS", "PURPOSES", "MethodSpec", "Verdict", "spec_of", "verify"]
