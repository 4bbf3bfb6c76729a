"""``nnmark serve``: a model over the Open Inference Protocol v2, REST and (``--grpc-port``) gRPC."""

from __future__ import annotations

import click

from nnmark import envs
from nnmark.cli._shared import CliError, FiniteFloat, device_option, load_model, model_option
from nnmark.cli.suspect import env_option, read_token

DEFAULT_PORT = 8000
DAWN_RATE = 0.005
"""DAWN's r_w (``nnmark.marks.ownership.dawn.RATE``, spelled here so that --help never imports torch)."""
DEFAULT_MAX_BATCH = 256


def dawn_secret(secret_file: str | None) -> bytes:
    """The owner's secret DAWN keys its draws and signs its record with; an error when there is none."""
    from nnmark import keys

    secret = keys.read_secret(secret_file)
    if secret is None:
        raise CliError("--dawn-record needs the owner's secret: pass --secret-file FILE or set NNMARK_SECRET")
    return secret


@click.command()
@model_option
@env_option
@device_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (0.0.0.0 exposes it).")
@click.option("--port", type=click.IntRange(0, 65535), default=DEFAULT_PORT, show_default=True)
@click.option("--model-name", default="model", show_default=True, help="The {name} in /v2/models/{name}.")
@click.option("--token-file", type=click.Path(dir_okay=False), help="Bearer token file (else NNMARK_TOKEN; none: open).")
@click.option("--clients-file", type=click.Path(dir_okay=False),
              help="Instead of one token, named clients: a 'NAME TOKEN' line each. DAWN records which client asked "
                   "what, and nnmark mark dawn --client keys one client's queries.")
@click.option("--output", type=click.Choice(["probabilities", "logits", "labels"]), default="probabilities",
              show_default=True, help="What the output tensor holds (labels: the label output only).")
@click.option("--max-batch", type=click.IntRange(1), default=DEFAULT_MAX_BATCH, show_default=True,
              help="Most inputs in one request.")
@click.option("--budget", type=click.IntRange(0), help="Most queries the server will answer in total.")
@click.option("--grpc-port", type=click.IntRange(1, 65535), help="Also serve OIP v2 gRPC on this port (nnmark[grpc]).")
@click.option("--insecure-no-token", is_flag=True,
              help="Allow a non-loopback --host without a token (it warns); refused otherwise.")
@click.option("--dawn-record", type=click.Path(file_okay=False),
              help="Watermark the answers with DAWN (a share --dawn-rate of queries answered with a keyed wrong label) "
                   "and record those queries in this folder, for nnmark mark dawn; needs --secret-file.")
@click.option("--dawn-rate", type=FiniteFloat(0, 1, min_open=True, max_open=True), default=DAWN_RATE,
              show_default=True, help="Share of queries DAWN answers with a watermark (each costs one answer).")
@click.option("--dawn-exempt", "dawn_exempt", multiple=True, type=click.Path(dir_okay=False),
              help="A key of the owner's (repeat) whose queries and canaries DAWN never watermarks, so that verify, "
                   "audit and watch of this API see the model's own answers.")
@click.option("--secret-file", type=click.Path(dir_okay=False),
              help="The owner's secret for --dawn-record and --dawn-exempt (else NNMARK_SECRET).")
def serve(model_source, env_name, device, host, port, model_name, token_file, clients_file, output, max_batch, budget,
          grpc_port, insecure_no_token, dawn_record, dawn_rate, dawn_exempt, secret_file) -> None:
    """Serve a model over OIP v2 (REST, and gRPC with --grpc-port), on 127.0.0.1 unless told otherwise, until
    Ctrl-C or SIGTERM (then it answers the requests in flight and exits 0).

    With --dawn-record, the API watermarks what a thief extracts through it (DAWN): a thief's copy repeats the
    recorded wrong labels, which nnmark mark dawn turns into a key.

    \b
    Example:
      nnmark serve --model lenet5.safetensors --port 8000 --grpc-port 8001 --token-file token
      nnmark serve --model lenet5.safetensors --port 8003 --dawn-record wm-record --dawn-rate 0.05 --secret-file secret
      nnmark serve --model lenet5.safetensors --port 8004 --clients-file clients --dawn-record wm --secret-file secret
    """
    from nnmark import serve as serving
    from nnmark.oracles.auth import read_clients

    if grpc_port == port:
        raise CliError(f"--grpc-port {grpc_port} is --port: serve gRPC on another port")
    if dawn_exempt and not dawn_record:
        raise CliError("--dawn-exempt names keys DAWN leaves alone: it needs --dawn-record")
    if dawn_record and output == "logits":
        raise CliError("--dawn-record serves labels or probabilities: logits would show the unwatermarked answer")
    token = read_token(token_file)
    clients = read_clients(clients_file) if clients_file else None
    if clients and token is not None:
        raise CliError("--clients-file gives each client's token: leave out --token-file and NNMARK_TOKEN")
    secret = dawn_secret(secret_file) if dawn_record else None
    serving.check_exposure(host, token or clients, insecure_no_token)
    for p in (port, grpc_port) if grpc_port else (port,):
        serving.bind(host, p).close()  # a taken address: one line now, before the model loads
    model, loaded = load_model(model_source)
    oracle = envs.get(env_name).oracle(model, loaded.input_shape, budget=budget, device=device)
    if dawn_record:
        from nnmark import keys
        from nnmark.marks.ownership import dawn

        exempt = dawn.exempt_digests([keys.load(path, secret=secret) for path in dawn_exempt])
        oracle = dawn.DawnOracle(oracle, secret, rate=dawn_rate, record=dawn.Record(dawn_record, secret),
                                 exempt=exempt)
    card = {"model_card": loaded.card.to_dict(), **({"environment": made_in} if (made_in := envs.record(oracle)) else {})}
    app = serving.create_app(oracle, model_name=model_name, token=token, clients=clients, output=output,
                             max_batch=max_batch, card=card)
    grpc_server = None
    if grpc_port:
        grpc_server = serving.grpc_server(app, host, grpc_port, insecure_no_token=insecure_no_token)[0]
    click.echo(f"serving {model_source.path} ({env_name} on {device}, {output}) as http://{host}:{port}/v2/models/{model_name}"
               + (f" and grpc://{host}:{grpc_port}" if grpc_port else "")
               + (f" to {len(clients)} named clients" if clients else " with a bearer token" if token
                  else " WITHOUT a token")
               + (f", recording DAWN watermarks in {dawn_record}" if dawn_record else ""), err=True)
    try:
        serving.run(app, host=host, port=port, log_level="warning", insecure_no_token=insecure_no_token)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM, after the requests in flight were answered: a server's normal end
        click.echo("stopped", err=True)
    finally:
        if grpc_server is not None:
            grpc_server.stop(None)
