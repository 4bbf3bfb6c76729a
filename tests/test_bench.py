import json
import warnings

import torch
from click.testing import CliRunner

from nnmark.cli import main


def test_bench_dbi_quick_writes_its_tables(tmp_path):
    r = CliRunner().invoke(main, ["bench", "dbi", "--quick", "--out-dir", str(tmp_path)])
    assert r.exit_code == 0, r.output
    result = json.loads((tmp_path / "dbi.json").read_text())
    (row,) = result["seeds"]
    assert set(row["change_rate"]) == {"DBI", "non-fragile", "random"}
    assert len(row["change_rate"]["DBI"]) == 6
    assert all(0 <= v <= 1 for rates in row["change_rate"].values() for v in rates.values())
    assert [t["itr"] for t in row["trace"]] == [100, 200]
    assert result["timing"]["ratio"] > 1
    md = (tmp_path / "dbi.md").read_text()
    assert "| DBI |" in md and "Generation time" in md and "False alarms" in md


def test_bench_cli_quick_times_every_command_beside_import_torch(tmp_path):
    r = CliRunner().invoke(main, ["bench", "cli", "--quick", "--out-dir", str(tmp_path)])
    assert r.exit_code == 0, r.output
    result = json.loads((tmp_path / "cli.json").read_text())
    assert [row["name"] for row in result["rows"]][:3] == ["python -c 'import torch'", "nnmark --help",
                                                           "nnmark --version"]
    assert all(row["median_s"] > 0 for row in result["rows"])
    assert result["help_ratio"] > 0 and result["verify_ratio"] > 0
    assert "| `nnmark --help` |" in (tmp_path / "cli.md").read_text()


FOREIGN = ["--model", "foreign_models:small_gn_net", "--input-shape", "3,32,32", "--normalize", "0.5,0.25"]
"""A tiny model that is not in the zoo (tests/foreign_models.py: GroupNorm + GELU, RGB 32x32, normalised)."""


def _refused(*args) -> str:
    """The one stderr line of a bench call that must exit 2."""
    r = CliRunner().invoke(main, ["bench", *map(str, args)])
    assert r.exit_code == 2, r.output
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith("error: ") and "Traceback" not in r.output
    return line


def test_bench_dbi_quick_on_a_foreign_model_trains_its_architecture_and_names_it(tmp_path):
    r = CliRunner().invoke(main, ["bench", "dbi", "--quick", *FOREIGN, "--data", "digits", "--out-dir", str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dbi-foreign_models-small_gn_net.json",
                                                          "dbi-foreign_models-small_gn_net.md"]
    result = json.loads((tmp_path / "dbi-foreign_models-small_gn_net.json").read_text())
    assert result["model"]["kind"] == "factory" and result["model"]["data"] == "digits"
    assert result["model"]["card"]["input_shape"] == [3, 32, 32]
    assert result["model"]["card"]["normalize"] == [[0.5] * 3, [0.25] * 3]
    (row,) = result["seeds"]
    assert row["accuracy"] > 0.5  # trained per seed on the digits converted to RGB 32x32, not used untrained
    assert set(row["change_rate"]) == {"DBI", "non-fragile", "random"} and len(row["change_rate"]["DBI"]) == 6
    md = (tmp_path / "dbi-foreign_models-small_gn_net.md").read_text()
    assert md.startswith("# DBI benchmark (Yin et al.), digits, small_gn_net\n")
    assert "Model: `foreign_models:small_gn_net`, a factory source" in md and "Card: input 3x32x32, 10 classes" in md
    assert ("`nnmark bench dbi --model foreign_models:small_gn_net --input-shape 3,32,32 --normalize "
            "0.5,0.5,0.5,0.25,0.25,0.25 --data digits --quick`") in md
    assert "eps = 1e-5 (nnmark's default for 3-channel input)" in md and "| DBI |" in md


def test_bench_refuses_a_source_it_cannot_train_and_model_options_without_a_model(tmp_path):
    import foreign_models

    scripted = tmp_path / "net.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated, and still a source kind users have
        torch.jit.save(torch.jit.script(foreign_models.small_gn_net()), scripted)
    out = tmp_path / "out"
    for bench in ("dbi", "integrity"):
        line = _refused(bench, "--quick", "--model", scripted, "--input-shape", "3,32,32", "--data", "digits",
                        "--out-dir", out)
        assert "trains a fresh model per seed" in line and "torchscript" in line
        assert "--data: only with --model" in _refused(bench, "--quick", "--data", "digits", "--out-dir", out)
        assert "--normalize: only with --model" in _refused(bench, "--quick", "--normalize", "imagenet",
                                                            "--out-dir", out)
        assert "pass --data" in _refused(bench, "--quick", *FOREIGN, "--out-dir", out)
    assert not out.exists()


def test_held_out_factory_loads_with_its_card_and_is_no_zoo_model():
    from nnmark import models
    from nnmark.bench import heldout, subject
    from nnmark.models.card import parse_normalize

    loaded = models.load_any(heldout.FACTORY, normalize=heldout.NORMALIZE)
    assert loaded.kind == "factory" and loaded.card.input_shape == (3, 32, 32) and loaded.num_classes == 10
    assert loaded.card.normalize == parse_normalize("imagenet", 3)
    zoo = {type(models.build(a, (3, 32, 32), 10)) for a in models.ARCHITECTURES}
    assert type(loaded.module) not in zoo
    assert {type(m) for m in loaded.module.modules()} >= {torch.nn.GroupNorm, torch.nn.GELU}
    # the command a foreign run records gives back the same card
    who = subject.foreign(loaded, "mnist5k")
    assert who.command("dbi") == ("dbi --model nnmark.bench.heldout:groupnorm_gelu --input-shape 3,32,32 "
                                  "--normalize imagenet --data mnist5k")
    assert who.stem("dbi") == "dbi-heldout-groupnorm_gelu" and subject.zoo("lenet5").stem("dbi") == "dbi"
