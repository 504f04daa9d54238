"""`python -m utils.compare`: baseline, DCS and QCS over seeds, summarised from the runs' metrics."""
import csv
import statistics

import pytest
from PIL import Image

import utils.compare
from data_preprocessing.outputs import OutputError
from utils.compare import main, plot_curves, summarise, write_summary


@pytest.mark.slow  # six training runs: three models, two seeds
def test_compare_trains_every_model_and_summarises_the_seeds(folder_data, tmp_path, capsys):
    data = folder_data
    out = tmp_path / "compare"
    training = ["--data-root", str(data), "--size", "tiny", "--image-size", "32", "--workers", "0",
                "--pretrained", "none", "-b", "4", "--lr", "1e-3", "--epochs", "2"]
    assert main(["--dataset", "folder", "--seeds", "2", "--out", str(out), "--", *training]) == 0
    rows = {r["model"]: r for r in csv.DictReader(open(out / "summary.csv"))}
    assert list(rows) == ["baseline", "DCS", "QCS"]
    for model, row in rows.items():
        runs = [list(csv.DictReader(open(out / f"{model}-seed{seed}" / "metrics.csv"))) for seed in (0, 1)]
        best = [max(float(r["test_acc"]) for r in run) for run in runs]
        final = [float(run[-1]["mean_class_acc"]) for run in runs]
        assert float(row["best test_acc mean"]) == pytest.approx(statistics.mean(best), abs=1e-4)
        assert float(row["best test_acc std"]) == pytest.approx(statistics.stdev(best), abs=1e-4)
        assert float(row["final mean_class_acc mean"]) == pytest.approx(statistics.mean(final), abs=1e-4)
    assert (out / "accuracy.png").stat().st_size > 0
    assert "| baseline |" in (out / "summary.md").read_text()
    assert main(["--dataset", "folder", "--out", str(out)]) == 2  # never overwrites


def rows(test, flipped, mean_class):
    """metrics.csv rows of one run: per-epoch accuracies as the training CLI writes them."""
    return [dict(epoch=str(e + 1), train_acc="50", test_acc=str(t), test_flipped_acc=str(f),
                 mean_class_acc=str(m), best_acc=str(max(test[:e + 1])), epoch_time_s=str(10 * (e + 1) + t))
            for e, (t, f, m) in enumerate(zip(test, flipped, mean_class))]


def test_extra_split_is_summarised_and_plotted_beside_test(tmp_path):
    histories = {"baseline": [rows([20, 40], [10, 5], [18, 38]), rows([30, 20], [0, 15], [28, 22])],
                 "QCS": [rows([50, 60], [30, 40], [50, 60]), rows([70, 60], [20, 30], [66, 58])]}
    summary = summarise(histories)
    # baseline: best test 40 and 30, final flipped 5 and 15, final mean class 38 and 22 (by hand)
    assert summary["baseline"]["best test_acc"] == pytest.approx((35.0, 50 ** 0.5))
    assert summary["baseline"]["final test_flipped_acc"] == pytest.approx((10.0, 50 ** 0.5))
    assert summary["baseline"]["best test_flipped_acc"] == pytest.approx((12.5, 12.5 ** 0.5))
    assert summary["QCS"]["final mean_class_acc"] == pytest.approx((59.0, 2 ** 0.5))
    assert summary["QCS"]["s/epoch"] == pytest.approx((75.0, 50 ** 0.5))  # (60+80)/2 and (80+80)/2
    assert "train_acc" not in " ".join(summary["QCS"]) and "best_acc" not in " ".join(summary["QCS"])
    text = write_summary(tmp_path, summary, seeds=2)
    assert "| QCS | 65.00 ± 7.07 |" in text  # best test 60 and 70
    header = next(csv.reader(open(tmp_path / "summary.csv")))
    assert "best test_flipped_acc mean" in header and "final test_flipped_acc std" in header
    plot_curves(tmp_path / "accuracy.png", histories, "demo", num_classes=7)
    with Image.open(tmp_path / "accuracy.png") as image:
        assert image.size == (1200, 400)  # one 6×4 inch panel per split (test, test_flipped) at 100 dpi


def test_a_single_seed_has_no_spread(tmp_path):
    summary = summarise({"QCS": [rows([50, 60], [30, 40], [50, 60])]})
    assert summary["QCS"]["best test_acc"] == (60.0, None)
    text = write_summary(tmp_path, summary, seeds=1)
    assert "| QCS | 60.00 | 60.00 | 40.00 | 40.00 | 60.00 | 60.00 | 70.00 |" in text and "±" not in text
    row = list(csv.DictReader(open(tmp_path / "summary.csv")))[0]
    assert row["best test_acc mean"] == "60.0000" and row["best test_acc std"] == ""


def test_an_out_that_cannot_be_written_is_refused_before_training(tmp_path, capsys, monkeypatch):
    def no_training(*args):
        raise AssertionError("trained before checking --out")

    monkeypatch.setattr(utils.compare, "train_main", no_training)
    blocker = tmp_path / "notes.txt"
    blocker.write_text("x")
    for out, cause in ((blocker, "is a file, not a folder"), (blocker / "compare", f"{blocker} is not a folder")):
        assert main(["--dataset", "folder", "--out", str(out)]) == 2
        assert capsys.readouterr().err == f"error: --out {out}: {cause}\n"


def test_summary_and_plot_go_through_the_output_layer(tmp_path):
    summary = summarise({"QCS": [rows([50, 60], [30, 40], [50, 60])]})
    missing = tmp_path / "missing"
    with pytest.raises(OutputError, match=f"--out {missing / 'summary.csv'}: folder {missing} does not exist"):
        write_summary(missing, summary, seeds=1)
    with pytest.raises(OutputError, match=f"--out {missing / 'accuracy.png'}: folder {missing} does not exist"):
        plot_curves(missing / "accuracy.png", {"QCS": [rows([50, 60], [30, 40], [50, 60])]}, "demo")
