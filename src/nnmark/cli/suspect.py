"""The suspect: the model a key is asked of, a local file (``--model``) or an endpoint (``--endpoint``).

``verify``, ``identify`` and ``audit`` share these options and the one function that builds the oracle.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import click

from nnmark import envs
from nnmark.cli._shared import MODEL_HELP, CliError, load_model, model_source_options

def read_token(token_file: str | None) -> bytes | None:
    """The bearer token in ``token_file`` (surrounding whitespace stripped), else $NNMARK_TOKEN, else None."""
    if token_file is None:
        token = os.environ.get("NNMARK_TOKEN", "").strip().encode()
        return token or None
    try:
        with open(token_file, "rb") as fh:
            token = fh.read().strip()
    except OSError as e:
        raise CliError(f"{token_file}: cannot read token file: {e.strerror or e}") from None
    if not token:
        raise CliError(f"{token_file}: token file is empty")
    return token


def env_option(f):
    return click.option("--env", "env_name", type=click.Choice(list(envs.KNOWN)), default="float32", show_default=True,
                        help="Execution environment the local model runs in.")(f)


def suspect_options(f=None, *, fleet: bool = False):
    """--model | --endpoint, with the local environment and the endpoint's name, token and query budget.

    ``fleet=True`` (``@suspect_options(fleet=True)``) lets --endpoint repeat: a tuple of URLs."""
    if f is None:
        return lambda g: suspect_options(g, fleet=fleet)
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
    ]):
        f = option(f)
    return f


@dataclass
class Suspect:
    """Where the suspect is (for reports) and, for a local model, its digest."""

    where: dict
    digest: str | None = None


@contextlib.contextmanager
def suspect_oracle(model_path, env_name, endpoint, model_name, token_file, budget, card: dict | None = None):
    """Yield (oracle, Suspect) for the suspect options; the oracle is closed afterwards. ``card`` (the key's model
    card) gives a local model the input shape and normalisation its options do not."""
    if (model_path is None) == (endpoint is None):
        raise CliError("pass exactly one of --model FILE and --endpoint URL")
    if endpoint:
        from nnmark.oracles.remote import HttpOracle

        with HttpOracle(endpoint, model_name=model_name, token=read_token(token_file), budget=budget) as oracle:
            yield oracle, Suspect({"endpoint": endpoint, "model_name": model_name})
        return
    model, loaded = load_model(model_path, card=card)
    oracle = envs.get(env_name).oracle(model, loaded.input_shape, budget=budget)
    try:
        yield oracle, Suspect({"model": model_path, "env": env_name}, loaded.digest)
    finally:
        oracle.close()
