"""`python -m utils.compare`: baseline, DCS and QCS over seeds, summarised from the runs' metrics."""
import csv
import statistics

import pytest

from test_train import folder_dataset
from utils.compare import main


def test_compare_trains_every_model_and_summarises_the_seeds(tmp_path, capsys):
    data = folder_dataset(tmp_path / "data")
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
