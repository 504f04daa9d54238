"""The speed benchmark (utils.benchmark) at the tiny size: report structure, loss check, helpers.

No timing is asserted: only the structure, invariants between the reported numbers and
hand-worked values.
"""
from contextlib import nullcontext

import pytest
import torch

from utils.tools import benchmark
from utils.tools.benchmark import Settings


def tiny_settings(**changes):
    options = dict(size="tiny", batch=2, device="cpu", repeats=1, warmup=1, image_size=56,
                   min_sample_seconds=0.0)
    options.update(changes)
    return Settings(**options)


@pytest.fixture(scope="module")
def report():
    settings = tiny_settings()
    texts = []
    result = benchmark.run_benchmark(settings, ["base", "qcs"], parts=benchmark.PARTS, emit=texts.append)
    return result, "\n".join(texts)


def test_report_has_every_part_and_arch(report):
    result, _ = report
    assert set(benchmark.PARTS) <= set(result)
    assert [r["arch"] for r in result["train"]["rows"]] == ["base", "qcs"]
    assert [r["arch"] for r in result["cost"]["rows"]] == ["base", "qcs"]
    assert result["fit24"] == {"skipped": "CUDA only"}
    assert len(result["setup"]["load_average_start"]) == 3


def test_train_rows_compare_batched_with_per_branch(report):
    result, _ = report
    base, qcs = result["train"]["rows"]
    assert "per_branch_step_s" not in base and "speedup" not in base
    assert qcs["branches"] == 4
    for key in ("batched", "per_branch"):
        assert len(qcs[f"{key}_step_times_s"]) == 1
        assert qcs[f"{key}_anchors_per_s"] == pytest.approx(2 / qcs[f"{key}_step_s"])
    assert qcs["speedup"] == pytest.approx(qcs["per_branch_step_s"] / qcs["batched_step_s"])


def test_batched_and_per_branch_losses_agree(report):
    result, _ = report
    assert 0.0 <= result["train"]["rows"][1]["loss_max_abs_diff"] <= benchmark.LOSS_TOLERANCE


def test_loss_check_detects_ungrouped_batch_norm(monkeypatch):
    """With the branch grouping of batch norm switched off, the batched loss must differ."""
    settings = tiny_settings()
    model = benchmark.make_model("qcs", settings)
    monkeypatch.setattr(model.base.backbone, "branch_groups", lambda num_groups: nullcontext())
    group = benchmark.make_group("qcs", 3, settings)
    assert benchmark.first_pass_loss_difference(model, group) > 1e-4
    assert model.batch_branches is True  # restored


def test_inference_rows(report):
    result, _ = report
    rows = result["inference"]["rows"]
    assert all(r["peak_bytes"] >= 0 and r["calls_per_sample"] == 1 for r in rows)
    assert [(r["model"], r["batch"]) for r in rows] == [
        ("base model alone", 8), ("QCS inference model", 8), ("base model alone", 1), ("QCS inference model", 1)]
    for r in rows:
        assert r["images_per_s"] * r["ms_per_image"] / 1000 == pytest.approx(1.0)
    assert rows[0]["relative_time"] == 1.0 and rows[2]["relative_time"] == 1.0


def test_cost_and_sampling(report):
    result, _ = report
    base, qcs = result["cost"]["rows"]
    assert base["cross_params"] == 0 and qcs["cross_params"] > 0
    assert qcs["base_params"] == base["base_params"]
    assert qcs["inference_gflops"] == pytest.approx(base["inference_gflops"])
    shuffled, balanced = result["sampling"]["rows"]
    assert shuffled["labels"] == 287651 and shuffled["groups"] == 287651
    assert balanced["groups"] == 287651 // 8 == 35956
    assert shuffled["groups_per_s"] > 0


def test_printed_tables(report):
    _, text = report
    for heading in ("Training: full SAM step", "Epoch time", "Inference:", "Cost (tiny size)",
                    "QCS group sampling", "Batch 24 check: skipped"):
        assert heading in text
    assert "first-pass losses identical within 1e-05: met" in text


def test_epoch_estimates_hand_worked():
    rows = [dict(arch="base", batched_anchors_per_s=10.0), dict(arch="qcs", batched_anchors_per_s=2.0)]
    estimates = benchmark.epoch_estimates(rows)
    assert [(e["arch"], e["dataset"]) for e in estimates] == [
        ("qcs", "RAF-DB"), ("qcs", "FERPlus"), ("qcs", "AffectNet-8")]
    raf, ferplus, affectnet = estimates
    assert raf["epoch_s"] == pytest.approx(12271 / 2)
    assert raf["recipe_epochs"] == 200 and raf["recipe_s"] == pytest.approx(200 * 12271 / 2)  # the released recipe
    assert ferplus["recipe_epochs"] == 150
    assert affectnet["anchors"] == 35956 and affectnet["recipe_epochs"] == 100
    assert benchmark.duration(3 * 3600 + 25 * 60 + 7.4) == "3:25:07"


def test_runs_alternate_after_warmup():
    calls = []
    runs = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    timing = benchmark.interleaved_times(runs, repeats=2, warmup=1, device=torch.device("cpu"))
    # warm-up, two timed rounds in alternating order, memory pass
    assert calls == ["a", "b"] + ["a", "b", "b", "a"] + ["a", "b"]
    assert timing.calls == 1 and [len(timing.seconds["a"]), len(timing.seconds["b"])] == [2, 2]


def test_fast_calls_are_repeated_within_a_sample():
    calls = []
    runs = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    timing = benchmark.interleaved_times(runs, repeats=1, warmup=1, device=torch.device("cpu"),
                                         min_sample_seconds=0.001)
    assert timing.calls > 1  # appending to a list takes far less than 1 ms
    assert calls == ["a", "b"] + ["a"] * timing.calls + ["b"] * timing.calls + ["a", "b"]


@pytest.mark.parametrize("call_seconds,min_seconds,expected",
                         [(0.3, 1.0, 4), (2.0, 1.0, 1), (0.25, 1.0, 4), (None, 1.0, 1), (0.01, 0.0, 1)])
def test_calls_per_sample(call_seconds, min_seconds, expected):
    assert benchmark.calls_per_sample(call_seconds, min_seconds) == expected


def test_cpu_peak_memory_sees_a_new_allocation():
    with benchmark.PeakMemory(torch.device("cpu")) as memory:
        block = torch.ones(16 * 2 ** 20)  # 64 MiB, every page written
        del block
    if not memory.exact:
        pytest.skip("the peak RSS cannot be reset here")
    assert 60 * 2 ** 20 <= memory.bytes < 1024 * 2 ** 20


def test_command_line(capsys):
    benchmark.main(["--quick", "--device", "cpu", "--parts", "cost", "fit24", "--arch", "dcs"])
    out = capsys.readouterr().out
    assert "Size tiny" in out and "DCS" in out and "Batch 24 check: skipped" in out


@pytest.mark.parametrize("argv,message", [(["--batch", "0"], "--batch"), (["--repeats", "0"], "--repeats"),
                                          (["--arch", "vgg"], "--arch")])
def test_bad_flags_are_named(capsys, argv, message):
    with pytest.raises(SystemExit):
        benchmark.main(argv)
    assert message in capsys.readouterr().err
