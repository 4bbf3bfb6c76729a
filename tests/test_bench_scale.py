"""Issue 24, ``nnmark bench scale``: timing that a busy host cannot inflate (the fastest whole iteration and floor of
several repeats, interleaved), the rows' arithmetic, SAC's and MetaFinger's projected keys, and the goals."""

import math
import time

import pytest
import torch

from nnmark.bench import scale
from nnmark.marks.ownership import metafinger, sac, shadow
from nnmark.models import training


def test_an_iteration_runs_from_a_call_over_all_rows_to_the_next_call():
    stamps = [(0.0, 10), (1.0, 10), (1.5, 10), (4.0, 5), (4.2, 5), (9.0, 10)]
    # 1.5 -> 4.0 started over all 10 rows; the calls over 5 rows (some samples stopped) start no iteration
    assert scale.iteration_seconds(stamps, 10) == [1.0, 0.5, 2.5]
    assert scale.iteration_seconds(stamps[:1], 10) == []


def test_a_one_thread_cpu_cell_counts_its_own_cpu_seconds_not_the_hosts_load(monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    start = scale._now()
    time.sleep(0.2)  # waiting (as for a core another process holds) costs no CPU seconds
    assert scale._now() - start < 0.1
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)  # several threads: wall seconds
    start = scale._now()
    time.sleep(0.2)
    assert scale._now() - start >= 0.2


class _Clock:
    """A fake ``scale._now`` that moves only when told."""

    def __init__(self):
        self.now = 0.0

    def __call__(self, device="cpu"):
        return self.now


def test_a_loop_cell_keeps_the_fastest_floor_whole_run_and_iteration_of_its_repeats(monkeypatch):
    """Two repeats of k = 3 iterations, each after k - 1 = 2 floor passes, on a scripted clock: the cell takes the
    least of each, not the first, last or mean, and leaves out an iteration that started over fewer rows."""
    clock = _Clock()
    monkeypatch.setattr(scale, "_now", clock)
    floors = iter([4.0, 3.0, 2.5, 6.0])
    iterations = iter([[2.0, 1.5, 0.7], [1.2, 5.0, 0.1]])  # per run: the work after each of its 3 gradient calls
    rows = iter([[8, 8, 8], [8, 4, 8]])  # the second run's second call is over 4 rows only: 5.0 s starts there

    class Oracle:
        def gradient(self, loss_fn, x, **kwargs):
            return None

    def run(oracle, x, k):
        for work, n in zip(next(iterations), next(rows)):
            oracle.gradient(None, torch.zeros(n))
            clock.now += work
        clock.now += 0.25  # the fixed rest after the loop

    def floor():
        clock.now += next(floors)

    monkeypatch.setattr(scale, "_methods", lambda: {"fake": (run, 100, "1 gradient")})
    cell = scale._loop_cell(Oracle(), torch.zeros(8), floor, {"row": "fake", "k": 3, "repeats": 2}, "cpu")
    assert cell["floor_s"] == pytest.approx(2.5)
    # run 1: 2.0, 1.5; run 2: 1.2 (5.0 began over 4 rows; a run's last call ends no iteration)
    assert cell["per_itr_s"] == pytest.approx(1.2)
    assert cell["iterations_timed"] == 3
    assert cell["run_s"] == pytest.approx(min(2.0 + 1.5 + 0.7, 1.2 + 5.0 + 0.1) + 0.25)


def _cell(**fields):
    return {"floor_s": 2.0, "run_s": 10.0, "per_itr_s": 3.0, "iterations_timed": 4, "peak_mib": 300.0,
            "ready_mib": 200.0, **fields}


def test_a_row_projects_the_fixed_rest_plus_the_default_iterations_over_the_cells_own_floor():
    task = {"n": 50, "batch": 16, "k": 3, "repeats": 2}
    floor = {"floor_s": 99.0, "verify_s": 0.5}  # the floor cell's own floor is not the method's
    row = scale._row("LeNet-5", "dbi", _cell(), floor, task)
    default = scale._methods()["dbi"][1]
    assert row["fixed_s"] == pytest.approx(10.0 - 3 * 3.0)
    assert row["ratio"] == pytest.approx(3.0 / 2.0)
    assert row["projected_key_s"] == pytest.approx((1.0 + 3.0 * default) * 100 / 50)
    assert row["per_itr_100_s"] == pytest.approx(6.0) and row["verify_100_s"] == pytest.approx(1.0)
    natural = scale._row("LeNet-5", "natural", _cell(run_s=0.5), floor, task)
    assert natural["ratio"] == pytest.approx(0.25) and natural["projected_key_s"] == pytest.approx(1.0)
    stopped = scale._row("LeNet-5", "dbi", _cell(run_s=5.0), floor, task)  # stopped early: no negative rest
    assert stopped["fixed_s"] == 0.0


def test_the_pool_counts_are_the_default_layouts():
    layout = shadow.PoolLayout()
    scratch = layout.negatives + layout.val_negatives
    copies = layout.af * (1 + layout.negatives)  # the source's and each family's eq. 1 copies
    counts = scale.pool_counts()
    assert counts["epochs"] == scratch * layout.epochs + copies * layout.finetune_epochs
    assert counts["families"] == layout.negatives
    assert counts["anchors"] == 1 + layout.af - round(layout.af / 3)
    assert counts["val_models"] == 1 + round(layout.af / 3) + layout.val_negatives


def test_sac_and_metafinger_keys_are_projected_from_the_measured_steps():
    task = {"n": 20, "batch": 16, "k": 3, "repeats": 2}
    cell = {"floor_s": 0.5, "train_floor_s": 2.5, "train_step_s": 3.2, "auto_step_s": 3.6, "auto_peak_mib": 350.0,
            "auto_micro_batch": 12, "meta_step_s": 7.0, "peak_mib": 400.0, "ready_mib": 300.0}
    row = scale._training_row("ResNet-18", cell, {"floor_s": 0.6, "verify_s": 0.2}, task)
    counts = scale.pool_counts()
    per_image = 3.2 / training.DEFAULT_BATCH_SIZE
    epoch = per_image * scale.OWNER_IMAGES["ResNet-18"]
    assert row["epoch_s"] == pytest.approx(epoch)
    assert row["train_ratio"] == pytest.approx(3.2 / 2.5) and row["auto_ratio"] == pytest.approx(3.6 / 3.2)
    assert row["auto_peak_mib"] == 350.0 and row["auto_micro_batch"] == 12
    assert row["pools_s"] == pytest.approx(counts["epochs"] * epoch)
    forwards = (1 + counts["families"] + sac.DEFAULT_SCRATCH_NEGATIVES) * 0.2 * 100 / 20
    assert row["sac_key_s"] == pytest.approx(
        row["pools_s"] + sac.DEFAULT_SCRATCH_NEGATIVES * sac.SCRATCH_EPOCHS * epoch + forwards)
    meta = metafinger.PAPER_EPOCHS * (counts["anchors"] * 7.0 + counts["val_models"] * 0.2) * 2 * 100 / 20
    assert row["meta_train_s"] == pytest.approx(meta)
    assert row["metafinger_key_s"] == pytest.approx(row["pools_s"] + meta)
    assert row["meta_ratio"] == pytest.approx(7.0 / ((2 * metafinger.PAPER_K + 1) * 0.5))


def _rows(ratios: dict[tuple[str, str], float]) -> list[dict]:
    return [{"model": m, "method": r, "ratio": v, "default_itr": 10_000, "projected_key_s": 100.0, "peak_mib": 2048}
            for (m, r), v in ratios.items()]


def test_the_goals_take_the_worst_one_gradient_ratio_and_project_a_gpu_key_from_the_published_rate():
    rows = _rows({("ResNet-50", "dbi"): 1.3, ("ResNet-50", "aid"): 1.4, ("ResNet-50", "pairs stage 2"): 1.9,
                  ("ResNet-20", "ipguard"): math.nan})
    goals = scale._goals(rows, "cpu")
    assert goals["worst_row"] == "ResNet-50, aid" and goals["worst_ratio"] == 1.4
    rate = scale.A100_TF32_TRAIN_IMAGES_PER_S / scale.INPUT_GRADIENT_SHARE
    assert goals["dbi_resnet50_gpu_s"] == pytest.approx(10_000 * scale.KEY_N / rate * 1.3)
    below = scale._goals(_rows({("ResNet-50", "dbi"): 0.8}), "cpu")  # a gradient costs a floor at least
    assert below["dbi_resnet50_gpu_s"] == pytest.approx(10_000 * scale.KEY_N / rate)
    assert scale._goals(rows, "cuda")["dbi_resnet50_gpu_s"] == 100.0  # on a card: its own measured projection


def test_the_header_cites_the_published_gpu_figure():
    result = {"goals": scale._goals(_rows({("ResNet-50", "dbi"): 1.3}), "cpu"), "device": "cpu",
              "params": {"batch": 16}}
    text = "\n".join(scale._goal_lines(result))
    assert scale.A100_SOURCE in text and "938" in text and "projection, not a measurement" in text
    assert scale.H100_SOURCE in text and "not a measurement)" in text  # the H100 factor is second-hand, and says so
    assert "SAC's and MetaFinger's training" not in text
    result["trained"] = [{"model": "ResNet-18", "peak_mib": 1024.0, "train_ratio": 1.2, "meta_ratio": 1.1},
                         {"model": "ResNet-50", "peak_mib": 9216.0, "train_ratio": 1.05, "meta_ratio": 1.3,
                          "auto_peak_mib": 3072.0, "auto_micro_batch": 12}]
    text = "\n".join(scale._goal_lines(result))
    assert "3.00 GiB for SAC's and MetaFinger's training at the defaults (a training step at the batch of 32, " \
           "12 " in text
    assert "9.00 GiB with whole training batches" in text
    assert "a training step at most 1.20x the model's own training floor (ResNet-18)" in text
    assert "a meta-training step at most 1.30x its 7 floors (ResNet-50)" in text
