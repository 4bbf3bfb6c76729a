"""Audit one target, or a fleet of them, with every key an owner holds: integrity, ownership and telltale at once.

Each target's oracle is opened once; each key reaches it through its own ``RecordingOracle``, which asks
the target only inputs it has not answered before and keeps every answer, so the method's own verifier
(``nnmark.marks.verify``) can be run on the sub-key of the queries asked so far after each batch at no
further cost, and the audit log gets a digest of every query sent and every answer received. Decisions are
the verifiers' own on the asked queries, stopped by the rules of ``nnmark.audit.sequential``;
``sequential=False`` asks the whole key in one batch, as ``nnmark verify`` does.

Keys apply to a target because the owner says so, never because the suspect agrees: what a target publishes
about itself (a model digest, a model card) can only add to a key's result, never waive it. A key whose
recorded card or digest disagrees with what the target publishes is still asked, and the disagreement is
reported beside its verdict; a key whose queries cannot be sent (another input shape), or that does not load,
is an error. A target on which no key was asked has status 2: a run that asked nothing passes nothing. A local
model publishes nothing about itself (its digest differs after any tampering, which is what integrity keys
look for); its computed digest is kept in the target's info.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Callable

import torch

from nnmark import __version__, keys, marks
from nnmark.audit import sequential as seq
from nnmark.audit import states
from nnmark.errors import ArgumentError, EndpointError, KeyFileError, NnmarkError
from nnmark.keyinfo import purpose_of, regular_file
from nnmark.keys import KeyFile
from nnmark.marks import canary
from nnmark.marks.integrity import pairing
from nnmark.marks.verdict import Verdict
from nnmark.models import LoadedModel
from nnmark.oracles import EndpointOracle, EndpointSpec, Oracle, TorchOracle
from nnmark.oracles.remote import make_spec
from nnmark.suspect import DEFAULT_DEVICE, DEFAULT_ENV, ModelSource, Suspect, described, open_suspect

INTEGRITY, OWNERSHIP, TELLTALE = marks.PURPOSES
GROUPS = {pairing.METHOD: 2}
"""Methods whose queries must be asked in runs of consecutive indices (a sensitive-sample pair)."""
SHARED_EXTRAS = ("clean", "plain")
"""Key extras that belong to the whole key, not to its queries one by one (a watermark's null images)."""
DEFAULT_WORKERS = 4
"""Targets of a fleet asked at once."""
MAX_THUMBNAILS = 8
"""Flipped queries per key kept for the report's pictures."""
ERROR = "error"
NOTHING_CHECKED = "nothing was checked"


class AuditError(NnmarkError):
    """An audit could not check all it was pointed at: a key that cannot be asked of a target, a key file that does
    not load, a target that cannot be reached, or a target on which no key was asked."""


# --- targets ----------------------------------------------------------------------------------------


@dataclass
class Target:
    """A model to audit.

    Attributes:
        name: how reports name it (a model path or a URL without user info).
        open: returns a context manager that yields the target's oracle (opened once per audit, closed after).
        info: what is known of it (server and model metadata, environment, computed digest), for the report and log.
        published: what the target says about itself ("model_digest", "model_card"), compared with each key.
    """

    name: str
    open: Callable[[], AbstractContextManager[Oracle]]
    info: dict = field(default_factory=dict)
    published: dict = field(default_factory=dict)


def opened_target(name: str, open_suspect: Callable[[], AbstractContextManager[tuple[Oracle, LoadedModel | None]]],
                  info: dict) -> Target:
    """A target whose oracle ``open_suspect()`` opens (yielding the oracle and a local model's ``LoadedModel`` or
    None, as ``nnmark.suspect.open_suspect`` does); when it opens, a local model's kind and digest, or an
    endpoint's server and model metadata (whatever the transport; the model's as its oracle read it on connecting),
    go into ``info`` and what an endpoint publishes about itself into ``published``, so a model that will not load
    or a fleet's unreachable replica is that target's error."""
    published: dict = {}

    @contextlib.contextmanager
    def open_oracle():
        with open_suspect() as (oracle, loaded):
            if loaded is not None:
                info.update(kind=loaded.kind, model_digest_computed=loaded.digest)
            if isinstance(oracle, EndpointOracle):
                info["server"] = _server_metadata(oracle)
                info["model"] = oracle.metadata
                published.update(published_by(oracle.metadata))
            yield oracle

    return Target(name, open_oracle, info, published)


def _server_metadata(oracle: EndpointOracle) -> dict:
    """What the server says of itself, or {"error": why} for a server that will not say (the audit goes on)."""
    try:
        return oracle.server_metadata()
    except EndpointError as e:
        return {"error": str(e)}


def local_target(model: ModelSource | str | os.PathLike, env: str = DEFAULT_ENV, budget: int | None = None,
                 device: str = DEFAULT_DEVICE) -> Target:
    """A local model (a ``ModelSource``, or a path or factory spec as one) run in environment ``env`` on ``device``;
    loaded when the audit reaches it, its kind and digest then go into ``info``."""
    source = model if isinstance(model, ModelSource) else ModelSource(os.fspath(model))
    return opened_target(source.path, lambda: open_suspect(source, env=env, device=device, budget=budget),
                         described(source, env, device))


def endpoint_target(endpoint: EndpointSpec | str, *, token: bytes | None = None, budget: int | None = None,
                    **fields) -> Target:
    """An OIP v2 endpoint over any transport (``make_spec(endpoint, fields)``: model_name, layout, ...)."""
    spec = make_spec(endpoint, fields)
    return opened_target(spec.shown_url, lambda: open_suspect(spec, token=token, budget=budget), described(spec))


def target_of(suspect: Suspect, *, env: str = DEFAULT_ENV, device: str = DEFAULT_DEVICE, token: bytes | None = None,
              budget: int | None = None) -> Target:
    """The target of a suspect as the command line and an inventory give it: ``local_target`` of a model source (run
    in ``env`` on ``device``), else ``endpoint_target`` of an endpoint spec (asked with ``token``)."""
    if isinstance(suspect, ModelSource):
        return local_target(suspect, env, budget, device)
    return endpoint_target(suspect, token=token, budget=budget)


def published_by(model_metadata: dict) -> dict:
    """The "model_digest" and "model_card" an endpoint's model metadata publishes in its parameters, if any."""
    params = model_metadata.get("parameters") if isinstance(model_metadata.get("parameters"), dict) else {}
    return {name: params[name] for name in ("model_digest", "model_card") if name in params}


# --- recording oracle and sub-keys -------------------------------------------------------------------


def tensor_digest(t: torch.Tensor) -> str:
    """SHA-256 of a tensor's bytes: how the audit records what it sent, and how the watch finds which key queries."""
    return hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


class RecordingOracle(Oracle):
    """Answers from the answers ``inner`` gave before, asking ``inner`` only inputs it has not seen.

    Access is the inner oracle's, at most probabilities (probabilities and labels are asked together, in one
    ``predict``). ``sent`` and ``answers`` hold the SHA-256 of each input sent (its float32 bytes) and of each
    answer (label int64 bytes, then the float32 probabilities when given); ``sent_count`` counts them.
    """

    def __init__(self, inner: Oracle):
        super().__init__(inner.input_shape, inner.num_classes)
        self.access = "probabilities" if inner.can("probabilities") else "labels"
        self.inner = inner
        self._cache: dict[str, tuple[torch.Tensor | None, torch.Tensor]] = {}
        self.sent: list[str] = []
        self.answers: list[str] = []

    @property
    def sent_count(self) -> int:
        return len(self.sent)

    def _fetch(self, x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        x = x.float().contiguous()
        names = [tensor_digest(row) for row in x]
        new, seen = [], set()
        for i, name in enumerate(names):
            if name not in self._cache and name not in seen:
                seen.add(name)
                new.append(i)
        if new:
            rows = x[new]
            if self.access == "probabilities":
                p, y = self.inner.predict(rows)
            else:
                p, y = None, self.inner.labels(rows)
            for j, i in enumerate(new):
                answer = y[j : j + 1].to(torch.int64)
                self._cache[names[i]] = (None if p is None else p[j].float(), answer[0])
                self.sent.append(names[i])
                self.answers.append(tensor_digest(answer if p is None else torch.cat([answer.view(torch.uint8),
                                                                                p[j].float().view(torch.uint8)])))
        cached = [self._cache[name] for name in names]
        labels = torch.stack([c[1] for c in cached])
        probs = None if self.access == "labels" else torch.stack([c[0] for c in cached])
        return probs, labels

    def _labels(self, x: torch.Tensor) -> torch.Tensor:
        return self._fetch(x)[1]

    def _probabilities(self, x: torch.Tensor) -> torch.Tensor:
        return self._fetch(x)[0]

    def _predict(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._fetch(x)


def sub_key(key: KeyFile, idx: torch.Tensor) -> KeyFile:
    """The key cut to the queries ``idx`` (in that order), with each per-query extra cut alike; the whole key's
    extras (``SHARED_EXTRAS``, the canaries) kept as they are."""
    n = len(key.expected)
    extras = {name: t[idx].contiguous() if _per_query(name, t, n) else t for name, t in key.extras.items()}
    return dataclasses.replace(key, queries=key.queries[idx].contiguous(), expected=key.expected[idx].contiguous(),
                               extras=extras)


def _per_query(name: str, t: torch.Tensor, n: int) -> bool:
    return name not in SHARED_EXTRAS and not name.startswith(canary.PREFIX) and t.dim() > 0 and len(t) == n


# --- one key -----------------------------------------------------------------------------------------


@dataclass
class AuditKey:
    """A key file to audit with: where it is, the SHA-256 of its bytes, and its contents; or, for a file that does
    not load, ``key`` None, ``error`` saying why and ``error_type`` its type (``states.error_type``)."""

    path: str
    sha256: str
    key: KeyFile | None
    error: str = ""
    error_type: str = ""


def load_key(path: str | os.PathLike, *, secret: bytes | None, allow_unsigned: bool = False) -> AuditKey:
    """Load and check one key file and digest the bytes it was read from (``keys.load_digested``); a file that is
    not a regular file or fails its checks gives an ``AuditKey`` carrying the error, so the run reports it."""
    try:
        key, digest = keys.load_digested(regular_file(path), secret=secret, allow_unsigned=allow_unsigned)
    except KeyFileError as e:
        return AuditKey(str(path), "", None, str(e).removeprefix(f"{path}: "), states.error_type(e))
    return AuditKey(str(path), digest, key)


def load_keys(paths: list[str | os.PathLike], *, secret: bytes | None, allow_unsigned: bool = False) -> list[AuditKey]:
    """``load_key`` of each path, in order."""
    return [load_key(path, secret=secret, allow_unsigned=allow_unsigned) for path in paths]


@dataclass
class KeyResult:
    """One key's part of an audit.

    Attributes:
        key, key_sha256, method, purpose: the key file, its digest, its method and the method's purpose.
        decision: the method's verdict word, or ``ERROR``.
        passed: True / False; None when the key could not be asked (an error).
        statistic_name, statistic: what the verifier measured on the asked queries.
        p_value: ownership: the binomial p-value of the whole key, or the anytime-valid min(1, 1/E_t) when it
            stopped early; None otherwise. threshold: the method's decision threshold, where it has one.
        queries: inputs sent to the target for this key (its extras included; an endpoint oracle's own
            consistency re-asks not counted); key_size: the key's queries.
        flipped: key indices answered otherwise than the key expects, among those asked.
        rule: the sequential rule that stopped (``sequential.Step.rule``); e_value: its e-value, if any.
        note: why the key could not be asked (an error), or ''.
        error_type: the type of that error (``states.error_type``: a name in ``nnmark.errors``), or ''.
        spread: an endpoint that answered the same input two ways: the largest change of a probability measured.
        disagreements: where what the target publishes (digest, model card, classes) disagrees with what the key
            records; the key is asked all the same, and these are reported beside its verdict.
        details: the verifier's details; preflight: the canary preflight's note, if the key has canaries.
        sent, answers: SHA-256 of each input sent and answer received (for the audit log).
        thumbnails: up to ``MAX_THUMBNAILS`` (flipped query, its source or None) pairs, for the HTML report.
    """

    key: str
    key_sha256: str
    method: str
    purpose: str
    decision: str
    passed: bool | None
    key_size: int
    statistic_name: str = ""
    statistic: float | None = None
    p_value: float | None = None
    threshold: float | None = None
    queries: int = 0
    flipped: list[int] = field(default_factory=list)
    rule: str = ""
    e_value: float | None = None
    note: str = ""
    error_type: str = ""
    spread: float | None = None
    disagreements: list[str] = field(default_factory=list)
    details: dict = field(default_factory=dict)
    preflight: str | None = None
    sent: list[str] = field(default_factory=list, repr=False)
    answers: list[str] = field(default_factory=list, repr=False)
    thumbnails: list[tuple[torch.Tensor, torch.Tensor | None]] = field(default_factory=list, repr=False)

    def to_dict(self, *, exchanges: bool = False) -> dict:
        """The JSON-able fields and the key's ``state``; the per-query digests only with ``exchanges``."""
        skip = {"thumbnails"} | (set() if exchanges else {"sent", "answers"})
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in skip}
        return jsonable({**fields, "state": states.state(self)})


def jsonable(value):
    """``value`` with tensors turned into lists, tuples into lists, and non-finite floats into None."""
    if isinstance(value, torch.Tensor):
        value = value.tolist()
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else None
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def check_askable(key: KeyFile, oracle: Oracle) -> None:
    """``AuditError`` when the key's queries cannot be sent to ``oracle`` (another input shape)."""
    if tuple(key.queries.shape[1:]) != oracle.input_shape:
        raise AuditError(f"cannot be asked: its queries have shape {tuple(key.queries.shape[1:])}; the target takes "
                         f"{oracle.input_shape}")


def disagreements(key: KeyFile, oracle: Oracle, published: dict) -> list[str]:
    """Where the target (its classes, and the digest and model card it publishes) disagrees with ``key``'s record.

    Reported beside the key's verdict, never a reason to skip the key: the suspect can add checks, not waive them."""
    found = []
    classes = key.config.get("num_classes")
    if isinstance(classes, int) and classes != oracle.num_classes:
        found.append(f"key made for {classes} classes; the target has {oracle.num_classes}")
    digest = published.get("model_digest")
    if digest and key.model_digest and digest != key.model_digest:
        found.append(f"key made for model {key.model_digest[:12]}; the target publishes {str(digest)[:12]}")
    card, key_card = published.get("model_card"), key.config.get("model_card")
    if isinstance(card, dict) and isinstance(key_card, dict):
        differ = card.keys() ^ key_card.keys()  # an entry added or dropped counts, as does one changed
        differ |= {name for name in card.keys() & key_card.keys() if card[name] != key_card[name]}
        if differ:
            found.append(f"the target's model card differs from the key's in {', '.join(sorted(map(str, differ)))}")
    return found


def _preflight(oracle: Oracle, key: KeyFile) -> str | None:
    """The canary preflight's note on the whole key (``canary.preflight``: ``EndpointMismatch`` when an endpoint
    answers as the keyed model does under a known misreading); None for a key without canaries."""
    return canary.preflight(oracle, key) if canary.QUERIES in key.extras else None


def _ownership_rule(verdict: Verdict) -> dict:
    """p0, threshold and max_p_value of an ownership verdict (``stats.match_verdict`` or ``watermark_verdict``)."""
    d = verdict.details
    return {"p0": d.get("p0", d.get("null")), "threshold": d.get("threshold", d.get("min_success")),
            "max_p_value": d.get("max_p_value", d.get("alpha"))}


def decide(purpose: str, verdict: Verdict, asked: int, n: int, alpha: float) -> seq.Step:
    """The sequential step for a verdict on the first ``asked`` of n queries (``nnmark.audit.sequential``)."""
    if purpose == INTEGRITY:
        return seq.integrity_decision(0 if verdict.passed else 1, asked, n)
    if purpose == TELLTALE:
        return seq.telltale_decision(verdict.details["consistent"], asked, n)
    if marks.METHODS[verdict.method].whole_key:
        return seq.Step(True, verdict.passed, "whole key")
    return seq.ownership_decision(asked - len(verdict.flipped), asked, n, **_ownership_rule(verdict), alpha=alpha)


def _ownership_p_value(verdict: Verdict, asked: int, n: int) -> float | None:
    """The whole key's binomial p-value, or the anytime-valid min(1, 1/E_t) of the match indicators asked so far
    against the null the MATCH claim is tested against (``sequential.match_null``)."""
    if asked >= n:
        return verdict.details.get("p_value")
    return seq.anytime_p_value(asked - len(verdict.flipped), asked, seq.match_null(**_ownership_rule(verdict)))


@dataclass
class Settings:
    """How keys are asked.

    Attributes:
        secret: the owner's secret (keyed methods need it to verify).
        alpha: the error bound of a sequential ownership claim.
        seed: seeds the query order.
        sequential: False asks every query of every key in one batch, as ``nnmark verify`` does.
        batch_size: queries per batch in sequential mode.
        accept_environment: give an integrity key's verdict even where the key was made in another environment
            whose numerics alone could fail it (``marks.verify``).
    """

    secret: bytes | None = None
    alpha: float = seq.DEFAULT_ALPHA
    seed: int = 0
    sequential: bool = True
    batch_size: int = seq.DEFAULT_BATCH_SIZE
    accept_environment: bool = False

    def __post_init__(self) -> None:
        if not (isinstance(self.alpha, (int, float)) and 0 < self.alpha < 1):
            raise ArgumentError(f"alpha must lie in (0, 1), got {self.alpha}")
        if type(self.batch_size) is not int or self.batch_size < 1:
            raise ArgumentError(f"batch_size must be an integer >= 1, got {self.batch_size}")


def _prefixes(method: str, n: int, settings: Settings) -> list[torch.Tensor]:
    """The asked prefixes of the key's query order: seeded batches, or the whole key at once."""
    spec = marks.METHODS.get(method)
    if not settings.sequential or (spec is not None and spec.whole_key):
        return [torch.arange(n)]
    group = GROUPS.get(method, 1)
    return seq.batches(seq.query_order(n, settings.seed, group), settings.batch_size, group)


def _thumbnails(key: KeyFile, flipped: list[int]) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    sources = key.extras.get("sources")
    if sources is not None and tuple(sources.shape) != tuple(key.queries.shape):
        sources = None
    return [(key.queries[i], None if sources is None else sources[i]) for i in flipped[:MAX_THUMBNAILS]]


@contextlib.contextmanager
def key_micro_batches(oracle: Oracle, key: KeyFile):
    """While open, a local model's oracle whose environment sets no micro-batch asks in the key's (its config's
    ``batch_size``, checked when the key was read, as ``nnmark verify`` asks); an endpoint's oracle, or a key that
    records none, is left as it is."""
    size = key.config.get("batch_size")
    if size is None or not isinstance(oracle, TorchOracle) or oracle.batch_size is not None:
        yield
        return
    oracle.batch_size = size
    try:
        yield
    finally:
        oracle.batch_size = None


def audit_key(oracle: Oracle, akey: AuditKey, settings: Settings, published: dict | None = None) -> KeyResult:
    """Ask ``oracle`` the key's queries batch by batch until its purpose's rule decides; the key's result, with
    where the target disagrees with the key's record (``disagreements``). ``AuditError`` when it cannot be asked.
    A local model is asked in the key's micro-batches (``key_micro_batches``)."""
    key = akey.key
    n = len(key.expected)
    check_askable(key, oracle)
    base = KeyResult(akey.path, akey.sha256, key.method, purpose_of(key.method), "", None, n,
                     disagreements=disagreements(key, oracle, published or {}))
    recorder = RecordingOracle(oracle)
    with key_micro_batches(oracle, key):
        preflight = _preflight(recorder, key)
        for idx in _prefixes(key.method, n, settings):
            verdict = marks.verify(recorder, sub_key(key, idx), secret=settings.secret, preflight=False,
                                   accept_environment=settings.accept_environment)
            step = decide(base.purpose, verdict, len(idx), n, settings.alpha)
            if step.decided:
                break
    passed = verdict.passed if step.passed is None else step.passed
    decision = verdict.decision if passed == verdict.passed else marks.METHODS[key.method].verdicts[not passed]
    flipped = sorted(idx[verdict.flipped].tolist())
    d = verdict.details
    return dataclasses.replace(
        base, decision=decision, passed=passed, statistic_name=verdict.statistic_name, statistic=verdict.statistic,
        p_value=_ownership_p_value(verdict, len(idx), n) if base.purpose == OWNERSHIP else None,
        threshold=d.get("threshold", d.get("min_success")), queries=recorder.sent_count, flipped=flipped,
        rule=step.rule, e_value=step.e_value, details=jsonable(d), preflight=preflight, sent=recorder.sent,
        answers=recorder.answers, thumbnails=_thumbnails(key, flipped),
    )


def failed_key(akey: AuditKey, why: str, error_type: str = "", spread: float | None = None) -> KeyResult:
    """The error result of a key that was not asked: it did not load, or asking it failed for ``why`` (an error of
    type ``error_type``; ``spread``: an inconsistent endpoint's)."""
    method = akey.key.method if akey.key is not None else ""
    size = len(akey.key.expected) if akey.key is not None else 0
    return KeyResult(akey.path, akey.sha256, method, purpose_of(method), ERROR, None, size, note=why,
                     error_type=error_type, spread=spread)


def _failed(akey: AuditKey, error: NnmarkError) -> KeyResult:
    """The error result of a key: its own load error, else ``error`` (its type, and an inconsistent endpoint's
    spread, kept)."""
    if akey.key is None:
        return failed_key(akey, akey.error, akey.error_type)
    return failed_key(akey, str(error), states.error_type(error), getattr(error, "spread", None))


def _guarded(oracle: Oracle, akey: AuditKey, settings: Settings, published: dict) -> KeyResult:
    """``audit_key``; a key that did not load, or an ``NnmarkError`` while asking it, becomes an error result."""
    if akey.key is None:
        return failed_key(akey, akey.error, akey.error_type)
    try:
        return audit_key(oracle, akey, settings, published)
    except NnmarkError as e:
        return _failed(akey, e)


# --- targets and fleets ---------------------------------------------------------------------------------


@dataclass
class TargetReport:
    """The audit of one target: its name and info, each key's result, and an error that stopped it, if any (then
    every key's result is that error, of type ``error_type``, unless the key itself did not load)."""

    target: str
    info: dict
    keys: list[KeyResult] = field(default_factory=list)
    error: str = ""
    error_type: str = ""

    @property
    def queries(self) -> int:
        return sum(r.queries for r in self.keys)

    def problem(self) -> str:
        """Why this target's status is 2 (its error, the keys that failed, or that nothing was checked), else ''."""
        if self.error:
            return self.error
        why = []
        failed = [r for r in self.keys if r.decision == ERROR]
        if failed:
            why.append(f"{len(failed)} of {len(self.keys)} keys failed, first {failed[0].key}: {failed[0].note}")
        if not any(r.passed is not None for r in self.keys):
            why.append(NOTHING_CHECKED)
        return "; ".join(why)

    def status(self) -> int:
        """0 every check passed, 1 any negative verdict, 2 any error or nothing checked (``problem``)."""
        if self.problem():
            return 2
        return 1 if any(r.passed is False for r in self.keys) else 0

    def to_dict(self, *, exchanges: bool = False) -> dict:
        return jsonable({"target": self.target, "info": self.info, "error": self.error, "error_type": self.error_type,
                         "queries": self.queries, "status": self.status(), "states": states.states_of(self),
                         "keys": [r.to_dict(exchanges=exchanges) for r in self.keys]})


def audit_target(target: Target, audit_keys: list[AuditKey], settings: Settings) -> TargetReport:
    """Ask ``target`` every key, one after another, through one oracle; an error opening it is the report's error,
    and each key's."""
    try:
        with target.open() as oracle:
            results = [_guarded(oracle, akey, settings, target.published) for akey in audit_keys]
    except NnmarkError as e:
        return TargetReport(target.name, target.info, [_failed(akey, e) for akey in audit_keys], str(e),
                            states.error_type(e))
    return TargetReport(target.name, target.info, results)


def audit_each(jobs: list[tuple[Target, list[AuditKey]]], settings: Settings,
               workers: int = DEFAULT_WORKERS) -> list[TargetReport]:
    """``audit_target`` of each (target, its keys), at most ``workers`` at once (threads); reports in the jobs'
    order. An inventory's targets each have their own keys."""
    if workers < 1:
        raise ArgumentError(f"workers must be >= 1, got {workers}")
    with ThreadPoolExecutor(max_workers=min(workers, max(1, len(jobs))), thread_name_prefix="nnmark-audit") as pool:
        return list(pool.map(lambda job: audit_target(*job, settings), jobs))


def audit_fleet(targets: list[Target], audit_keys: list[AuditKey], settings: Settings,
                workers: int = DEFAULT_WORKERS) -> list[TargetReport]:
    """``audit_each`` of every target with the same keys."""
    return audit_each([(target, audit_keys) for target in targets], settings, workers)


def exit_status(reports: list[TargetReport]) -> int:
    """The CLI's exit status: 2 on any error (or no target at all), else 1 on any negative verdict, else 0."""
    return max((r.status() for r in reports), default=2)


def problem(reports: list[TargetReport]) -> str:
    """One line on why the run's status is 2, naming the first target with a problem and how many more; '' if none."""
    if not reports:
        return f"no target: {NOTHING_CHECKED}"
    failing = [r for r in reports if r.problem()]
    if not failing:
        return ""
    more = f" (and {len(failing) - 1} more targets)" if len(failing) > 1 else ""
    return f"{failing[0].target}: {failing[0].problem()}{more}"


def log_record(reports: list[TargetReport], settings: Settings) -> dict:
    """The audit-log record of one run (``nnmark.audit.log.append`` adds seq and mac): time (UTC), nnmark's
    version, the settings, and per target its info and per key the key's digest, the verdict and the digests of
    every query sent and answer received."""
    return {
        "time": keys.now_utc(),
        "nnmark": __version__,
        "alpha": settings.alpha,
        "seed": settings.seed,
        "sequential": settings.sequential,
        "targets": [report.to_dict(exchanges=True) for report in reports],
    }
