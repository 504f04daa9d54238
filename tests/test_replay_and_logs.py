"""Runs users can watch and replay: TensorBoard logs, `--config` replay, the evaluation's figure."""
import csv
import json

import pytest

import utils.config
from helpers import tiny_training_args
from utils.train import main


def test_tensorboard_scalars_equal_the_metrics_csv(folder_data, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    assert main("qcs", tiny_training_args(folder_data, "--epochs", "2", "--tensorboard",
                                          "--output-dir", str(run))) == 0
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0}).Reload()
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    columns = [c for c in rows[0] if c != "epoch"]
    assert {"lr", "loss", "loss_base_1", "loss_cross_4", "train_acc", "test_acc", "mean_class_acc",
            "macro_f1"} <= set(columns)
    for column in columns:
        logged = {event.step: event.value for event in events.Scalars(column)}
        expected = {int(row["epoch"]): float(row[column]) for row in rows}
        assert logged.keys() == expected.keys(), column
        for epoch, value in expected.items():
            assert logged[epoch] == pytest.approx(value, rel=1e-6, abs=1e-6), (column, epoch)
    assert "confusion_best" in events.Tags()["images"]
    assert "config/text_summary" in events.Tags()["tensors"]


def test_tensorboard_without_the_package_is_one_line(folder_data, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(utils.config, "tensorboard_available", lambda: False)
    assert main("qcs", tiny_training_args(folder_data, "--tensorboard", "--output-dir", str(tmp_path / "r"))) == 2
    assert "--tensorboard needs the tensorboard package: pip install -r requirements-tensorboard.txt" in \
        capsys.readouterr().out
    assert not (tmp_path / "r").exists()


def test_a_replayed_run_has_the_originals_settings_but_the_overridden(trained_run, tmp_path, capsys):
    replay = tmp_path / "replay"
    assert main("qcs", ["--config", str(trained_run / "config.json"), "--seed", "7",
                        "--output-dir", str(replay)]) == 0
    original = json.loads((trained_run / "config.json").read_text())
    replayed = json.loads((replay / "config.json").read_text())
    provenance = {"config", "replayed_from", "replay_overrides", "output_dir", "run_id"}
    changed = {k for k in original.keys() | replayed.keys() if original.get(k) != replayed.get(k)}
    assert changed == provenance | {"seed"}, changed
    assert replayed["seed"] == 7 and original["seed"] == 0
    assert replayed["replay_overrides"] == ["--seed"]
    assert f"settings replayed from {(trained_run / 'config.json').resolve()}, except those given on the " \
           "command line: --seed" in capsys.readouterr().out


@pytest.mark.parametrize("content,expected", [
    ("not json", "not a readable JSON file"),
    (json.dumps({"recipe_arch": "dcs"}), "is a DCS run; replay it with main_DCS.py"),
    (json.dumps({"recipe_arch": "qcs", "batch_size": 0}), "--batch-size must be at least 1"),
])
def test_a_bad_replayed_config_is_one_line(tmp_path, content, expected, capsys):
    path = tmp_path / "config.json"
    path.write_text(content)
    assert main("qcs", ["--config", str(path), "--output-dir", str(tmp_path / "r")]) == 2
    assert expected in capsys.readouterr().out and not (tmp_path / "r").exists()


def test_config_and_resume_together_are_refused(trained_run, capsys):
    assert main("qcs", ["--config", str(trained_run / "config.json"), "--resume",
                        str(trained_run / "last.pth")]) == 2
    assert "give one of them" in capsys.readouterr().out


def eval_options(data, *extra):
    return ["--dataset", "folder", "--data-root", str(data), "--size", "tiny", "--image-size", "32",
            "--workers", "0", "-b", "4", *extra]


def test_evaluate_draws_the_confusion_figure_beside_the_predictions(trained_run, folder_data, tmp_path):
    predictions = tmp_path / "pred.csv"
    assert main("qcs", eval_options(folder_data, "--evaluate", str(trained_run / "best.pth"),
                                    "--predictions", str(predictions))) == 0
    figure = tmp_path / "pred_confusion.png"
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_draws_into_the_run_folder_without_overwriting(trained_run_copy, folder_data, capsys):
    run = trained_run_copy
    argv = eval_options(folder_data, "--evaluate", str(run / "best.pth"))
    assert main("qcs", argv) == 0
    figure = run / "confusion_best_folder.png"
    first = figure.read_bytes()
    assert first[:4] == b"\x89PNG"
    assert main("qcs", argv) == 0
    assert figure.read_bytes() == first and f"{figure} exists" in capsys.readouterr().out


def test_a_folder_that_merely_holds_a_config_json_gets_no_figure(trained_run, folder_data, tmp_path):
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    (downloads / "model.pth").write_bytes((trained_run / "best.pth").read_bytes())
    (downloads / "config.json").write_text('{"hidden_size": 768}')  # some other program's settings
    assert main("qcs", eval_options(folder_data, "--evaluate", str(downloads / "model.pth"))) == 0
    assert sorted(path.name for path in downloads.iterdir()) == ["config.json", "model.pth"]


def test_an_existing_figure_beside_the_predictions_is_refused_before_the_work(trained_run, folder_data,
                                                                              tmp_path, capsys):
    (tmp_path / "pred_confusion.png").write_text("a user's file")
    assert main("qcs", eval_options(folder_data, "--evaluate", str(trained_run / "best.pth"),
                                    "--predictions", str(tmp_path / "pred.csv"))) == 2
    assert "pred_confusion.png already exists" in capsys.readouterr().out
    assert not (tmp_path / "pred.csv").exists()
