"""``nnmark attack``: one command per registered attack, its options generated from the attack's signature."""

import json

import click
import pytest
from click.testing import CliRunner
import torch

from nnmark import models
from nnmark.attacks import ATTACKS
from nnmark.cli import main
from nnmark.cli.attack import SOURCES, attack
from nnmark.cli.suspect import ENDPOINT_OPTIONS
from nnmark.models import training


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_every_attack_is_a_command_whose_options_are_the_attacks(name):
    spec, command = ATTACKS[name], attack.commands[name]
    params = {p.name: p for p in command.params}
    assert {"model_path", "out"} <= set(params)
    for option in spec.options:
        param = params[option.name]
        assert param.opts[0] == "--" + option.name.replace("_", "-")
        assert param.default == option.default  # the attack module's constant, not a copy
        assert param.help and param.help.lower() == option.help.lower()
        if option.choices:
            assert isinstance(param.type, click.Choice) and tuple(param.type.choices) == option.choices
        if option.type is bool:
            assert param.is_flag
    def data_options():
        """Stands in for a command, to collect the options of the attack's data kind."""

    for decorate in SOURCES[spec.data].options:
        decorate(data_options)
    data_names = {p.name for p in getattr(data_options, "__click_params__", [])}
    source_options = {"weights", "input_shape", "normalize"}  # the model source's, shared by every --model
    own = {o.name for o in spec.options}
    suspect = {"env_name", "endpoint", "model_name", "token_file", "budget", *ENDPOINT_OPTIONS} - own
    trains = {"micro_batch"} if "lr" in own else set()  # an attack that trains takes --micro-batch
    assert set(params) == {"model_path", "out", "as_json", "device", *source_options,
                           *(suspect if spec.oracle else ()), *data_names, *own, *trains}
    assert "Example:" in CliRunner().invoke(main, ["attack", name, "--help"]).output


def test_a_registered_attack_runs_from_the_command_line(lenet_file, tmp_path):
    out = tmp_path / "student.safetensors"
    r = CliRunner().invoke(main, ["attack", "distill", "--model", str(lenet_file), "--out", str(out), "--epochs", "8",
                                  "--temperature", "2"])
    assert r.exit_code == 0, r.output
    assert "distill temperature 2, alpha 0.9, epochs 8" in r.output
    student, config = models.load(out)
    teacher, _ = models.load(lenet_file)
    assert models.digest(student) != models.digest(teacher) and config.accuracy > 0.8
    r = CliRunner().invoke(main, ["attack", "distill", "--model", str(lenet_file), "--out", str(out), "--alpha", "2"])
    assert r.exit_code == 2 and r.stderr.startswith("error: need temperature > 0 and alpha in [0, 1]")


def test_micro_batch_bounds_every_training_pass_of_an_attack(lenet_file, tmp_path, monkeypatch, training_passes):
    def sizes(*extra):
        seen, r = training_passes(lambda: CliRunner().invoke(main, [
            "attack", "finetune", "--model", str(lenet_file), "--out", str(tmp_path / "ft.safetensors"), "--steps", "3",
            "--batch-size", "16", *extra]))
        assert r.exit_code == 0, r.output
        return seen

    assert max(sizes()) == 16 and max(sizes("--micro-batch", "5")) == 5 and max(sizes("--micro-batch", "whole")) == 16
    model, config = models.load(lenet_file)
    per = training.saved_bytes_per_image(model.train(), torch.rand(2, *config.input_shape))
    monkeypatch.setattr(training, "ACTIVATION_BUDGET", 6 * per)
    assert max(sizes()) == 6 and max(sizes("--micro-batch", "whole")) == 16  # auto, the default: 6 fit the budget
    r = CliRunner().invoke(main, ["attack", "finetune", "--model", str(lenet_file), "--out",
                                  str(tmp_path / "ft.safetensors"), "--micro-batch", "0"])
    assert r.exit_code == 2 and "--micro-batch" in r.output


@pytest.mark.parametrize("name", ["distill", "extract"])
def test_a_student_of_another_architecture_is_written_as_a_checkpoint_of_its_own(name, lenet_file, tmp_path):
    out = tmp_path / "student.safetensors"
    r = CliRunner().invoke(main, ["attack", name, "--model", str(lenet_file), "--out", str(out), "--epochs", "1",
                                  "--student-arch", "vgg11", "--json"])
    assert r.exit_code == 0, r.output
    student, config = models.load(out)
    assert config.arch == "vgg11" and config.data == "mnist5k" and 0.1 < config.accuracy <= 1
    assert json.loads(r.stdout) == {"attack": name, "model": str(lenet_file), "out": str(out),
                                    "test_accuracy": config.accuracy}
    assert isinstance(student, type(models.build("vgg11", (1, 28, 28), 10)))


def test_an_attack_on_a_model_takes_the_thiefs_half_when_the_data_name_it(lenet_file, tmp_path):
    def run(spec):
        return CliRunner().invoke(main, ["attack", "finetune", "--model", str(lenet_file), "--out",
                                         str(tmp_path / "ft.safetensors"), "--steps", "1", "--data", spec])

    half, attacker = run("mnist5k@thief"), run("mnist5k")
    assert half.exit_code == 0 and attacker.exit_code == 0, half.output + attacker.output
    from nnmark import data
    from nnmark.data.roles import attacker_data

    thief, mnist = data.load("mnist5k@thief").train, data.load("mnist5k")
    assert len(thief) != len(attacker_data(mnist))
    assert f"on {len(thief)} attacker images" in half.output
    assert f"on {len(attacker_data(mnist))} attacker images" in attacker.output
