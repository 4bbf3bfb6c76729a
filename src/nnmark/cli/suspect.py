"""The suspect: the model a key is asked of, a local file (``--model``) or an endpoint (``--endpoint``).

``verify``, ``identify`` and ``audit`` share these options; the command receives them as one value,
``SuspectOptions``, whose suspects (a ``ModelSource``, or an ``EndpointSpec`` per URL) open through the one
function the Python API and ``nnmark.audit.run`` use too (``nnmark.suspect.open_suspect``). The endpoint's shape
(``--input-name``, ``--layout``, ... ``--max-answer-bytes``) fills an ``EndpointSpec``
(``nnmark.oracles.endpoint``); what a flag leaves open is read from the server's metadata, and a flag that
contradicts the metadata is refused in one line. ``grpc://host:port`` endpoints speak gRPC.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import types
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import click
from click.core import ParameterSource

from nnmark import envs
from nnmark.cli._shared import MODEL_HELP, CliError, FiniteFloat, device_option, model_source_options, source_value
from nnmark.oracles import Oracle
from nnmark.oracles import endpoint as ep
from nnmark.suspect import ModelSource, Suspect, described, open_suspect

ENDPOINT_OPTIONS = {
    "transport": click.option(
        "--transport", type=click.Choice(ep.TRANSPORTS),
        help="rest (JSON), rest-binary (binary tensor extension) or grpc  [default: grpc for grpc://, else rest]"),
    "model_version": click.option("--model-version",
                                  help="The endpoint's model version (/v2/models/{name}/versions/{v})."),
    "input_name": click.option("--input-name", help="Input tensor name  [default: the metadata's only input]"),
    "layout": click.option("--layout", type=click.Choice(ep.LAYOUTS),
                           help="Input layout  [default: from the metadata, else NCHW]"),
    "input_dtype": click.option("--input-dtype", type=click.Choice(ep.INPUT_DTYPES),
                                help="Input datatype; UINT8 sends 0-255 pixels  [default: the metadata's]"),
    "output_name": click.option("--output-name",
                                help="Output tensor name  [default: probabilities, logits or label by kind]"),
    "output_kind": click.option("--output-kind", type=click.Choice(ep.OUTPUT_KINDS),
                                help="What the output holds; logits get a float64 softmax; labels: label-only "
                                     "access  [default: told by the output's name]"),
    "label_name": click.option("--label-name", help="An integer [N] or [N, 1] output with the server's own labels  "
                                                    "[default: 'label' when listed]"),
    "batch_size": click.option("--batch-size", type=click.IntRange(1),
                               help="Most inputs per request, or per forward pass of a local --model  [default: the "
                                    "metadata's max_batch_size, else all; a local model: the key's micro-batch]"),
    "timeout": click.option("--timeout", type=FiniteFloat(0, min_open=True), default=ep.DEFAULT_TIMEOUT,
                            show_default=True, help="Seconds one request may take in all (an overall deadline)."),
    "retries": click.option("--retries", type=click.IntRange(0), default=ep.DEFAULT_RETRIES, show_default=True,
                            help="Retries after a transient failure (connection, timeout, 429, 502-504)."),
    "consistency_check": click.option(
        "--no-consistency-check", "consistency_check", is_flag=True, flag_value=False, default=True,
        help="Do not re-ask a few inputs per call to catch an endpoint whose answers move."),
    "max_answer_bytes": click.option("--max-answer-bytes", type=click.IntRange(1), default=ep.DEFAULT_MAX_ANSWER_BYTES,
                                     show_default=True, help="Largest answer read; a longer one is refused."),
}
"""The endpoint-shape options by ``EndpointSpec`` field. A fleet (``audit``) has its own --batch-size (queries
between two sequential decisions), so its requests follow the server's max_batch_size. The normalisation is the
model source's ``--normalize`` (one option: what the model expects of pixels, whether it runs here or behind the
endpoint, where the client then sends (x - mean) / std)."""


def read_token(token_file: str | None) -> bytes | None:
    """The bearer token in ``token_file``, else $NNMARK_TOKEN, else None (``nnmark.oracles.auth.read_token``:
    whitespace stripped; anything an HTTP header cannot carry refused without echoing it)."""
    from nnmark.oracles.auth import read_token as read

    return read(token_file)


DEFAULTABLE = ("transport", "model_version", "input_name", "layout", "input_dtype", "output_name", "output_kind",
               "label_name")
"""The ``EndpointSpec`` fields a key may carry as defaults: how the model is deployed, not where."""


def _parse_defaults(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]):
    defaults = {}
    for item in values:
        name, sep, value = item.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or name not in DEFAULTABLE or not value.strip():
            raise click.BadParameter(f"expected FIELD=VALUE with FIELD one of {', '.join(DEFAULTABLE)}, got {item!r}",
                                     ctx, param)
        defaults[name] = value.strip()
    if defaults:
        ep.EndpointSpec("http://127.0.0.1", **defaults)  # checked now (ArgumentError), not at verification
    return defaults


def endpoint_default_option(f):
    """``--endpoint-default FIELD=VALUE`` (repeatable): how the model will be deployed, kept in the key as the
    default of verify's endpoint-shape options (``DEFAULTABLE``); the command receives ``endpoint_defaults``, a
    dict."""
    return click.option("--endpoint-default", "endpoint_defaults", multiple=True, callback=_parse_defaults,
                        metavar="FIELD=VALUE",
                        help="How the model is deployed, kept in the key for verify --endpoint (repeat): "
                             f"{', '.join(DEFAULTABLE)}; e.g. layout=NHWC.")(f)


def env_option(f):
    return click.option("--env", "env_name", type=click.Choice(list(envs.KNOWN)), default="float32", show_default=True,
                        help="Execution environment the local model runs in.")(f)


def accept_environment_option(f):
    return click.option("--accept-environment", is_flag=True,
                        help="Give an integrity key's verdict even where the key was made in another environment "
                             "(device, dtype, backend flags) whose numerics alone could fail it.")(f)


@dataclass(frozen=True)
class SuspectOptions:
    """The suspect options of ``verify``, ``identify`` and ``audit`` as one value: a local model run in ``env``, or
    one or more endpoints of one shape.

    Attributes:
        model: the --model source, or None.
        endpoints: the --endpoint URLs (one, or a fleet's replicas).
        shape: the endpoint-shape options given (``EndpointSpec`` fields, --normalize parsed; unset ones left out).
        env: the environment a local model runs in.
        device: the device a local model runs on (resolved: cpu, cuda, cuda:N, mps).
        token: the bearer token the endpoints are asked with (never shown).
        budget: the most queries a check may spend.
    """

    model: ModelSource | None
    endpoints: tuple[str, ...]
    shape: Mapping[str, object]
    env: str
    token: bytes | None = field(repr=False)
    budget: int | None
    device: str = "cpu"

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", types.MappingProxyType(dict(self.shape)))

    def suspects(self, defaults: dict | None = None) -> list[Suspect]:
        """The local model, or each endpoint's ``EndpointSpec``: the options over a key's ``defaults``."""
        if self.model is not None:
            return [self.model]
        return [ep.EndpointSpec(url, **{**(defaults or {}), **self.shape}) for url in self.endpoints]

    @contextlib.contextmanager
    def opened(self, *, card: dict | None = None, defaults: dict | None = None, progress: bool = False,
               batch_size: int | None = None) -> Iterator[tuple[Oracle, dict, str | None]]:
        """Open the one suspect (``open_suspect``); yield (oracle, where it is, for reports, and a local model's
        digest or None). ``card`` and ``defaults``: the key's model card and endpoint defaults; ``batch_size``: the
        key's micro-batch, a local model's unless --batch-size says otherwise."""
        (suspect,) = self.suspects(defaults)
        with open_suspect(suspect, env=self.env, device=self.device, token=self.token, budget=self.budget, card=card,
                          progress=progress, batch_size=self.shape.get("batch_size", batch_size)) as (oracle, loaded):
            yield oracle, described(suspect, self.env, self.device), loaded.digest if loaded is not None else None


def _given(ctx: click.Context, names: set[str]) -> tuple[str, ...]:
    """The flags of the parameters in ``names`` given on the command line or from the environment, in the command's
    order."""
    return tuple(param.opts[0] for param in ctx.command.params if param.name in names
                 and ctx.get_parameter_source(param.name) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT))


def _with_suspect(f, names: list[str], fleet: bool, optional: bool = False):
    """Give the command ``suspect`` (``SuspectOptions``, or None when ``optional`` and no suspect is named) in place
    of the suspect options; when ``optional``, also ``suspect_given``: the flags of the suspect options given (empty
    when none was)."""
    @functools.wraps(f)
    def command(*args, model_path, weights, input_shape, normalize, env_name, device, endpoint, model_name,
                token_file, budget, **kwargs):
        endpoints = tuple(endpoint) if fleet else (endpoint,) if endpoint else ()
        if optional and model_path is None and not endpoints:
            return f(*args, suspect=None, **{k: v for k, v in kwargs.items() if k not in names})
        if (model_path is None) == (not endpoints):
            raise CliError("pass --model FILE or one or more --endpoint URL" if fleet else
                           "pass exactly one of --model FILE and --endpoint URL")
        source = source_value(model_path, weights, input_shape, normalize, alone=("normalize",))
        shape = {name: kwargs.pop(name) for name in names}
        if source is None and normalize is not None:  # what the model behind the endpoint expects
            shape["normalize"] = ep.parse_normalize(normalize)
        given = {name: value for name, value in shape.items() if value is not None}
        token = read_token(token_file) if endpoints else None
        if source is None and device != "cpu":
            raise CliError("--device: only with --model (an endpoint runs where its server puts it)")
        suspect = SuspectOptions(source, endpoints, {"model_name": model_name, **given}, env_name, token, budget,
                                 device)
        return f(*args, suspect=suspect, **kwargs)
    if not optional:
        return command

    own = {p.name for p in inspect.signature(command, follow_wrapped=False).parameters.values()
           if p.kind is p.KEYWORD_ONLY}  # the suspect options besides the endpoint-shape ones

    @click.pass_context
    @functools.wraps(f)
    def optional_command(ctx: click.Context, *args, **kwargs):
        return command(*args, suspect_given=_given(ctx, own | set(names)), **kwargs)
    return optional_command


def suspect_options(f=None, *, fleet: bool = False, taken: tuple[str, ...] = (), optional: bool = False):
    """--model | --endpoint, with the local environment and the endpoint's name, token, shape and query budget,
    given to the command as one value, ``suspect`` (``SuspectOptions``).

    ``fleet=True`` (``@suspect_options(fleet=True)``) lets --endpoint repeat, and leaves --batch-size to the
    command. ``taken``: endpoint-shape options (``ENDPOINT_OPTIONS`` names) left to a command that has options of
    those names (its requests then follow the server's max_batch_size, as a fleet's). ``optional``: a command that
    can name its suspects otherwise (``audit --inventory``) gets ``suspect`` None when neither is given, and
    ``suspect_given``, the flags of the suspect options that were given (empty when none was)."""
    if f is None:
        return lambda g: suspect_options(g, fleet=fleet, taken=taken, optional=optional)
    names = [name for name in ENDPOINT_OPTIONS if name not in taken and not (fleet and name == "batch_size")]
    f = _with_suspect(f, names, fleet, optional)
    for option in reversed([
        click.option("--model", "model_path", type=click.Path(dir_okay=False),
                     help=f"Local model to ask. {MODEL_HELP}"),
        model_source_options,
        env_option,
        device_option(help="Where a local --model runs: cpu, cuda, cuda:N, mps, or auto (the first accelerator)."),
        click.option("--endpoint", multiple=fleet,
                     help="Ask the model behind this OIP v2 base URL instead (e.g. http://host:8000)"
                     + ("; repeat it for a fleet of replicas." if fleet else ".")),
        click.option("--model-name", default="model", show_default=True, help="The endpoint's model name."),
        click.option("--token-file", type=click.Path(dir_okay=False),
                     help="Bearer token file for --endpoint (else NNMARK_TOKEN)."),
        click.option("--budget", type=click.IntRange(0), help="Most queries the command may spend."),
        *(ENDPOINT_OPTIONS[name] for name in names),
    ]):
        f = option(f)
    return f
