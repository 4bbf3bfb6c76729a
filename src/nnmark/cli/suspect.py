"""The suspect: the model a key is asked of, a local file (``--model``) or an endpoint (``--endpoint``).

``verify``, ``identify`` and ``audit`` share these options and the one function that builds the oracle.
The endpoint's shape (``--input-name``, ``--layout``, ... ``--max-answer-bytes``) fills an ``EndpointSpec``
(``nnmark.oracles.endpoint``); what a flag leaves open is read from the server's metadata, and a flag that
contradicts the metadata is refused in one line. ``grpc://host:port`` endpoints speak gRPC.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass

import click

from nnmark import envs
from nnmark.cli._shared import (
    MODEL_HELP, CliError, load_model, model_source_options, progress_enabled, source_option,
)
from nnmark.oracles import endpoint as ep

_SPEC_OPTIONS: dict = {}
"""The running command's endpoint-shape options, for ``suspect_oracle`` (also in a fleet audit's worker threads)."""
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
                               help="Most inputs per request  [default: the metadata's max_batch_size, else all]"),
    "timeout": click.option("--timeout", type=click.FloatRange(0, min_open=True), default=ep.DEFAULT_TIMEOUT,
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


def _stash_spec_options(f, names: list[str]):
    """Take the endpoint-shape options ``names`` out of the command's keywords, for ``suspect_oracle``."""
    @functools.wraps(f)
    def command(*args, **kwargs):
        _SPEC_OPTIONS.clear()
        _SPEC_OPTIONS.update({name: kwargs.pop(name) for name in names}, normalize=source_option("normalize"))
        return f(*args, **kwargs)
    return command


_ENDPOINT_DEFAULTS = "nnmark.endpoint_defaults"
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
    ctx.meta[_ENDPOINT_DEFAULTS] = defaults


def endpoint_default_option(f):
    """``--endpoint-default FIELD=VALUE`` (repeatable): how the model will be deployed, kept in the key as the
    default of verify's endpoint-shape options (``DEFAULTABLE``)."""
    return click.option("--endpoint-default", multiple=True, expose_value=False, callback=_parse_defaults,
                        metavar="FIELD=VALUE",
                        help="How the model is deployed, kept in the key for verify --endpoint (repeat): "
                             f"{', '.join(DEFAULTABLE)}; e.g. layout=NHWC.")(f)


def endpoint_defaults() -> dict:
    """The ``--endpoint-default`` values given to this command."""
    return dict(click.get_current_context().meta.get(_ENDPOINT_DEFAULTS, {}))


def endpoint_spec(url: str, model_name: str, options: dict, defaults: dict | None = None) -> ep.EndpointSpec:
    """The ``EndpointSpec`` of ``--endpoint`` and the endpoint-shape options (unset ones left open), over the
    key's ``defaults`` (``--endpoint-default`` at marking: the options override them)."""
    fields = {**(defaults or {}), **{name: value for name, value in options.items() if value is not None}}
    if "normalize" in fields:
        fields["normalize"] = ep.parse_normalize(fields["normalize"])
    return ep.EndpointSpec(url, model_name=model_name, **fields)


def env_option(f):
    return click.option("--env", "env_name", type=click.Choice(list(envs.KNOWN)), default="float32", show_default=True,
                        help="Execution environment the local model runs in.")(f)


def suspect_options(f=None, *, fleet: bool = False):
    """--model | --endpoint, with the local environment and the endpoint's name, token and query budget.

    ``fleet=True`` (``@suspect_options(fleet=True)``) lets --endpoint repeat: a tuple of URLs."""
    if f is None:
        return lambda g: suspect_options(g, fleet=fleet)
    names = [name for name in ENDPOINT_OPTIONS if not (fleet and name == "batch_size")]
    f = _stash_spec_options(f, names)
    for option in reversed([
        click.option("--model", "model_path", type=click.Path(dir_okay=False),
                     help=f"Local model to ask. {MODEL_HELP}"),
        model_source_options,
        env_option,
        click.option("--endpoint", multiple=fleet,
                     help="Ask the model behind this OIP v2 base URL instead (e.g. http://host:8000)"
                     + ("; repeat it for a fleet of replicas." if fleet else ".")),
        click.option("--model-name", default="model", show_default=True, help="The endpoint's model name."),
        click.option("--token-file", type=click.Path(dir_okay=False),
                     help="Bearer token file for --endpoint (else NNMARK_TOKEN)."),
        click.option("--budget", type=click.IntRange(0), help="Most queries the check may spend."),
        *(ENDPOINT_OPTIONS[name] for name in names),
    ]):
        f = option(f)
    return f


@dataclass
class Suspect:
    """Where the suspect is (for reports) and, for a local model, its digest."""

    where: dict
    digest: str | None = None


@contextlib.contextmanager
def suspect_oracle(model_path, env_name, endpoint, model_name, token_file, budget, card: dict | None = None,
                   defaults: dict | None = None):
    """Yield (oracle, Suspect) for the suspect options; the oracle is closed afterwards. ``card`` (the key's model
    card) gives a local model the input shape and normalisation its options do not; ``defaults`` (the key's
    endpoint defaults) describe an endpoint where the options do not."""
    if (model_path is None) == (endpoint is None):
        raise CliError("pass exactly one of --model FILE and --endpoint URL")
    if endpoint:
        from nnmark.oracles import connect

        spec = endpoint_spec(endpoint, model_name, _SPEC_OPTIONS, defaults)
        known = {"input_shape": tuple(card["input_shape"]), "num_classes": card["num_classes"]} if card else {}
        with connect(spec, token=read_token(token_file), budget=budget, progress=progress_enabled(),
                     **known) as oracle:
            yield oracle, Suspect({"endpoint": spec.shown_url, "model_name": model_name})
        return
    model, loaded = load_model(model_path, card=card)
    oracle = envs.get(env_name).oracle(model, loaded.input_shape, budget=budget)
    try:
        yield oracle, Suspect({"model": model_path, "env": env_name}, loaded.digest)
    finally:
        oracle.close()
