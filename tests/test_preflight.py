"""``nnmark verify`` end to end: changed models are TAMPERED (exit 1), locally and behind an endpoint; endpoints
that are mis-described exit 2 naming the misreading."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from fastapi import FastAPI, Request
from fastapi.responses import Response
from test_cli import nnmark_serve

from nnmark import keys, marks, models
from nnmark.cli import main
from nnmark.errors import EndpointMismatch
from nnmark.marks import canary
from nnmark.marks.integrity import dbi
from nnmark.oracles import HttpOracle, TorchOracle, oip
from nnmark.serve import create_app, serving

SHAPE = (1, 28, 28)
DIFFERS = "preflight: the canaries fit no known reading of the keyed model"


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args], env={"NNMARK_SECRET": None, "NNMARK_TOKEN": None})


@pytest.fixture(scope="module")
def key_file(lenet, mnist, tmp_path_factory):
    oracle = TorchOracle(lenet, SHAPE)
    key = canary.attach(dbi.create(oracle, mnist.train.x[:20], itr=100, eps=1e-3), oracle, mnist.test.x[:300],
                        mnist.test.y[:300])
    path = tmp_path_factory.mktemp("keys") / "dbi.key"
    keys.save(key, path, secret=None)
    return path


@pytest.fixture(scope="module")
def changed(changed_models, mnist, tmp_path_factory):
    """Checkpoint files of models that differ from the keyed one."""
    folder = tmp_path_factory.mktemp("changed")
    config = models.ModelConfig("lenet5", mnist.shape, mnist.num_classes, data="mnist5k")
    for name, model in changed_models.items():
        models.save(model, config, folder / f"{name.replace(' ', '-')}.safetensors")
    return {name: folder / f"{name.replace(' ', '-')}.safetensors" for name in changed_models}


def _tampered(r) -> str:
    assert r.exit_code == 1, r.output
    row = json.loads(r.stdout)
    assert row["decision"] == "tampered"
    return row["details"]["preflight"]


@pytest.mark.parametrize("which", ["independent", "random", "heavy fine-tune"])
def test_a_changed_model_is_tampered_locally_and_behind_an_endpoint(key_file, changed, which):
    note = _tampered(cli("verify", key_file, "--unsigned", "--model", changed[which], "--json"))
    assert note.startswith(DIFFERS)
    model, _ = models.load(changed[which])
    with serving(create_app(TorchOracle(model, SHAPE), model_name="model")) as url:
        note = _tampered(cli("verify", key_file, "--unsigned", "--endpoint", url, "--json"))
    assert note.startswith(DIFFERS) and note.endswith("an endpoint format nnmark does not know would look the same")


def test_nnmark_serve_of_a_changed_model_is_tampered_and_a_wrong_normalize_exits_2(key_file, changed, lenet_file):
    with nnmark_serve("--model", changed["heavy fine-tune"]) as url:
        assert _tampered(cli("verify", key_file, "--unsigned", "--endpoint", url, "--json")).startswith(DIFFERS)
    with nnmark_serve("--model", lenet_file) as url:
        r = cli("verify", key_file, "--unsigned", "--endpoint", url, "--normalize", "0.1307,0.3081")
        assert r.exit_code == 2 and "--normalize" in r.stderr and len(r.stderr.splitlines()) == 1
        assert cli("verify", key_file, "--unsigned", "--endpoint", url).exit_code == 0


def misdescribed(model, shape, *, sees=lambda x: x, nhwc=False, logits_as="probabilities") -> FastAPI:
    """An OIP v2 server that publishes no model card, with all-open input dimensions: the model sees ``sees`` of
    the values sent, read as NHWC when ``nhwc``; its logits go out under the name ``logits_as``."""
    app = FastAPI()
    out = {"name": logits_as, "datatype": "FP32", "shape": [-1, 10]}

    @app.get("/v2/models/{m}")
    async def metadata(m: str):
        return {"name": m, "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, -1, -1, -1]}],
                "outputs": [out]}

    @app.post("/v2/models/{m}/infer")
    async def infer(request: Request, m: str):
        req = oip.decode_request(await request.body(), request.headers.get(oip.HEADER_LENGTH))
        x = torch.from_numpy(np.ascontiguousarray(req.inputs["x"])).float()
        x = x.reshape(len(x), shape[1], shape[2], shape[0]).permute(0, 3, 1, 2) if nhwc else x
        z = model(sees(x)).detach()
        content, headers = oip.encode_response(m, {logits_as: z.numpy()}, request_id=req.id, binary=set())
        return Response(content, headers=headers)

    return app


def test_mis_normalised_endpoints_exit_2_naming_the_misreading(key_file, lenet):
    class Expects(torch.nn.Module):  # a server that de-normalises what it gets: it expects MNIST statistics
        def forward(self, x):
            return lenet(x * 0.3081 + 0.1307)

    with serving(misdescribed(Expects(), SHAPE, logits_as="logits")) as url:
        r = cli("verify", key_file, "--unsigned", "--endpoint", url)
        assert r.exit_code == 2 and len(r.stderr.splitlines()) == 1, r.output
        assert "endpoint answers as the keyed model does when its inputs are not normalised with the MNIST " \
               "statistics it expects: check --normalize" in r.stderr
        assert cli("verify", key_file, "--unsigned", "--endpoint", url, "--normalize", "0.1307,0.3081").exit_code == 0
    with serving(misdescribed(lenet, SHAPE, logits_as="logits")) as url:  # expects pixels
        r = cli("verify", key_file, "--unsigned", "--endpoint", url, "--normalize", "0.5,0.5")
        assert r.exit_code == 2 and "normalised with 0.5 statistics it does not expect: check --normalize" \
            in r.stderr, r.output
        assert cli("verify", key_file, "--unsigned", "--endpoint", url).exit_code == 0


def test_output_kinds_mixed_up_exit_2_naming_the_flag(key_file, lenet):
    with serving(misdescribed(lenet, SHAPE, logits_as="probabilities")) as url:  # logits declared as probabilities
        r = cli("verify", key_file, "--unsigned", "--endpoint", url)
        assert r.exit_code == 2 and "logits? then pass --output-kind logits" in r.stderr, r.output
    with serving(create_app(TorchOracle(lenet, SHAPE), model_name="model")) as url:  # probabilities as logits
        r = cli("verify", key_file, "--unsigned", "--endpoint", url, "--output-name", "probabilities",
                "--output-kind", "logits")
        assert r.exit_code == 2 and "its probabilities are read as logits (a softmax applied twice): check " \
                                    "--output-kind" in r.stderr, r.output


def test_an_nhwc_server_read_as_nchw_stops_naming_the_layout(lenet, mnist):
    class FirstChannel(torch.nn.Module):
        def forward(self, x):
            return lenet(x[:, :1])

    three = (3, 28, 28)
    x = mnist.test.x[:300]
    pool = torch.cat([x, 1 - x, x / 2], dim=1)
    oracle = TorchOracle(FirstChannel(), three)
    key = canary.attach(dbi.create(oracle, pool[:6], itr=20, eps=1e-3), oracle, pool, mnist.test.y[:300])
    with serving(misdescribed(FirstChannel(), three, nhwc=True, logits_as="logits")) as url:
        with HttpOracle(url, input_shape=three, num_classes=10) as endpoint:
            with pytest.raises(EndpointMismatch, match=r"its NCHW inputs are read as NHWC: check --layout$"):
                marks.verify(endpoint, key)
        with HttpOracle(url, input_shape=three, num_classes=10, layout="NHWC") as endpoint:
            assert marks.verify(endpoint, key).decision == "intact"
