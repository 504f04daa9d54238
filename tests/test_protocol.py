"""Research protocol beyond the paper: model selection on a validation split, cross-dataset
evaluation with classes matched by name, flip test-time augmentation."""
import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

import utils.train
from data_preprocessing import (
    AFFECTNET7_CLASSES,
    AFFECTNET8_CLASSES,
    RAF_DB_CLASSES,
    stratified_holdout,
)
from data_preprocessing import (
    test_transform as released_test_transform,
)
from data_preprocessing.datasets import LIST_LAYOUTS
from helpers import save_checkpoint, tiny_training_args
from models import build_model
from utils.checkpoint import read_checkpoint
from utils.train import main


def write_layout(root, dataset, per_split, side=24, seed=0):
    """Random images in a released list layout: `per_split[split]` images of each class."""
    layout, rng = LIST_LAYOUTS[dataset], np.random.default_rng(seed)
    (root / layout.image_dir).mkdir(parents=True)
    for split, count in per_split.items():
        lines = []
        for index in range(count * len(layout.classes)):
            name = f"{split}_{index:04d}.png"
            Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(root / layout.image_dir / name)
            lines.append(f"{name} {index % len(layout.classes)}\n")
        (root / layout.list_files[split]).write_text("".join(lines))
    return root


# ------------------------------------------------------------------ model selection

def scripted_evaluate(val_size, val_accs, test_accs):
    """An `evaluate` stand-in returning the scripted accuracy of each epoch for the validation
    loader (recognised by its size) and the test loader."""
    calls = {"val": 0, "test": 0}

    def evaluate(model, loader, device, num_classes, **options):
        split = "val" if len(loader.dataset) == val_size else "test"
        acc = (val_accs if split == "val" else test_accs)[calls[split]]
        calls[split] += 1
        confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)
        confusion[0, 0] = 1
        return dict(confusion=confusion, acc=acc, mean_class_acc=acc, macro_f1=acc)

    return evaluate


@pytest.mark.parametrize("select_on,best_epoch,best_acc", [("val", 2, 70.0), ("test", 3, 90.0)])
def test_selection_on_val_and_on_test_pick_different_epochs(tmp_path, monkeypatch, capsys, select_on,
                                                            best_epoch, best_acc):
    data = write_layout(tmp_path / "FERPlus", "FERPlus", {"train": 2, "val": 1, "test": 3})
    monkeypatch.setattr(utils.train, "evaluate", scripted_evaluate(8, [50.0, 70.0, 60.0], [80.0, 60.0, 90.0]))
    run = tmp_path / "run"
    argv = ["--dataset", "FERPlus", "--data-root", str(data), "--baseline", "--size", "tiny", "--image-size", "24",
            "--workers", "0", "--pretrained", "none", "-b", "8", "--epochs", "3", "--select-on", select_on,
            "--output-dir", str(run)]
    assert main("qcs", argv) == 0
    checkpoint = read_checkpoint(run / "best.pth")
    assert (checkpoint["best_epoch"], checkpoint["best_acc"]) == (best_epoch, best_acc)
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    out = capsys.readouterr().out
    if select_on == "val":
        assert [float(r["val_acc"]) for r in rows] == [50.0, 70.0, 60.0]
        assert [float(r["test_at_best"]) for r in rows] == [80.0, 60.0, 60.0]
        assert "done: best validation accuracy 70.00% at epoch 2, test accuracy there 60.00%" in out
    else:
        assert "val_acc" not in rows[0] and "done: best test accuracy 90.00% at epoch 3" in out


def test_held_out_validation_is_stratified_seeded_and_disjoint():
    labels = np.array([0] * 10 + [1] * 4 + [2] * 1)
    kept, held = stratified_holdout(labels, 0.3, seed=5)
    assert sorted(np.bincount(labels[held], minlength=3).tolist()) == [0, 1, 3]  # round(3.0), round(1.2), none of 1
    assert np.bincount(labels[held], minlength=3).tolist() == [3, 1, 0]
    assert sorted(kept.tolist() + held.tolist()) == list(range(15))
    assert np.array_equal(held, stratified_holdout(labels, 0.3, seed=5)[1])
    others = {tuple(stratified_holdout(labels, 0.3, seed=s)[1]) for s in range(6)}
    assert len(others) > 1  # the seed chooses the images


def test_val_fraction_trains_on_the_rest_and_is_recorded(folder_data, tmp_path, capsys):
    run = tmp_path / "run"
    assert main("qcs", tiny_training_args(folder_data, "--epochs", "1", "--select-on", "val",
                                          "--val-fraction", "0.25", "--output-dir", str(run))) == 0
    assert "QCS on folder: 9 train / 6 test images" in capsys.readouterr().out  # 12 minus one of each class
    assert json.loads((run / "config.json").read_text())["val_fraction"] == 0.25
    assert "val_acc" in next(csv.DictReader(open(run / "metrics.csv")))


def test_select_on_val_without_a_validation_split_is_one_line(folder_data, tmp_path, capsys):
    assert main("qcs", tiny_training_args(folder_data, "--select-on", "val", "--output-dir", str(tmp_path / "r"))) == 2
    assert "give --val-fraction F to hold out part of train" in capsys.readouterr().out
    assert not (tmp_path / "r").exists()


def test_val_fraction_without_select_on_val_is_refused(folder_data, tmp_path, capsys):
    argv = tiny_training_args(folder_data, "--val-fraction", "0.2", "--output-dir", str(tmp_path / "r"))
    assert main("qcs", argv) == 2
    assert "--val-fraction has no effect without --select-on val" in capsys.readouterr().out


# ------------------------------------------------------------------ cross-dataset evaluation

@pytest.fixture(scope="module")
def rafdb_model(tmp_path_factory):
    """An untrained tiny base branch saved as this project's checkpoint of a RAF-DB run (24 px)."""
    torch.manual_seed(3)
    model = build_model("base", 7, size="tiny").eval()
    path = tmp_path_factory.mktemp("rafdb") / "rafdb.pth"
    save_checkpoint(path, model, RAF_DB_CLASSES, dataset="RAF-DB", image_size=24, size="tiny",
                    augmentation={"kind": "A"})
    return path, model


def logits_of(model, image_path, side=24, flip=False):
    image = released_test_transform(image_size=side)(Image.open(image_path).convert("RGB"))[None]
    with torch.no_grad():
        return model(image.flip(3) if flip else image)[0]


# RAF-DB's order is Surprise, Fear, Disgust, Happiness, Sadness, Anger, Neutral: for each AffectNet
# class (Neutral, Happy, Sad, Surprise, Fear, Disgust, Anger[, Contempt]), its RAF-DB index, by hand.
RAFDB_INDEX_OF_AFFECTNET = [6, 3, 4, 0, 1, 2, 5]


@pytest.mark.parametrize("dataset,classes", [("AffectNet-7", AFFECTNET7_CLASSES), ("AffectNet-8", AFFECTNET8_CLASSES)])
def test_cross_dataset_evaluation_matches_classes_by_name(rafdb_model, tmp_path, capsys, dataset, classes):
    path, model = rafdb_model
    data = write_layout(tmp_path / "AffectNet", dataset, {"test": 2})
    predictions = tmp_path / "pred.csv"
    assert main("qcs", ["--dataset", dataset, "--data-root", str(data), "--workers", "0", "--evaluate", str(path),
                        "--predictions", str(predictions)]) == 0
    out = capsys.readouterr().out
    left_out = 2 if dataset == "AffectNet-8" else 0  # the two Contempt images: RAF-DB has no contempt
    assert f"{left_out} images of classes the model does not know ({'Contempt' if left_out else 'none'})" in out
    rows = list(csv.reader(open(predictions)))[1:]
    assert len(rows) == 14
    image_dir = data / LIST_LAYOUTS[dataset].image_dir
    for name, label, pred, *values in rows:
        listed_label = int(name.split("_")[1][:4]) % len(classes)
        assert int(label) == listed_label and classes[listed_label] != "Contempt"
        expected = logits_of(model, image_dir / name)[RAFDB_INDEX_OF_AFFECTNET]
        assert np.allclose([float(v) for v in values], expected.tolist(), atol=1e-5)
        assert int(pred) == int(expected.argmax())
    summary = json.loads(predictions.with_suffix(".json").read_text())
    assert summary["classes"] == AFFECTNET7_CLASSES


def test_evaluation_on_the_training_dataset_is_unchanged(rafdb_model, tmp_path, capsys):
    path, model = rafdb_model
    data = write_layout(tmp_path / "RAF-DB", "RAF-DB", {"test": 1})
    predictions = tmp_path / "pred.csv"
    assert main("qcs", ["--data-root", str(data), "--workers", "0", "--evaluate", str(path),
                        "--predictions", str(predictions)]) == 0
    assert "cross-dataset" not in capsys.readouterr().out
    for name, _, _, *values in list(csv.reader(open(predictions)))[1:]:
        expected = logits_of(model, data / "basic" / name)
        assert np.allclose([float(v) for v in values], expected.tolist(), atol=1e-5)


# ------------------------------------------------------------------ flip test-time augmentation

def test_flip_tta_is_the_mean_of_the_image_and_its_mirror(rafdb_model, tmp_path, capsys):
    path, model = rafdb_model
    data = write_layout(tmp_path / "RAF-DB", "RAF-DB", {"test": 1})
    predictions = tmp_path / "pred.csv"
    assert main("qcs", ["--data-root", str(data), "--workers", "0", "--evaluate", str(path), "--tta", "flip",
                        "--predictions", str(predictions)]) == 0
    assert "flip test-time augmentation" in capsys.readouterr().out
    for name, _, _, *values in list(csv.reader(open(predictions)))[1:]:
        image = data / "basic" / name
        expected = (logits_of(model, image) + logits_of(model, image, flip=True)) / 2
        assert np.allclose([float(v) for v in values], expected.tolist(), atol=1e-5)
        assert not np.allclose([float(v) for v in values], logits_of(model, image).tolist(), atol=1e-4)
    assert json.loads(predictions.with_suffix(".json").read_text())["tta"] == "flip"


def test_flip_tta_in_training_is_said_in_the_log_and_the_metrics(folder_data, tmp_path, capsys):
    run = tmp_path / "run"
    assert main("qcs", tiny_training_args(folder_data, "--epochs", "1", "--tta", "flip", "--output-dir", str(run))) == 0
    assert "(flip TTA)" in capsys.readouterr().out
    assert next(csv.DictReader(open(run / "metrics.csv")))["tta"] == "flip"


def test_cross_dataset_evaluation_says_which_class_matched_which(rafdb_model, tmp_path, capsys):
    path, _ = rafdb_model
    data = write_layout(tmp_path / "AffectNet", "AffectNet-7", {"test": 2})
    assert main("qcs", ["--dataset", "AffectNet-7", "--data-root", str(data), "--workers", "0",
                        "--evaluate", str(path)]) == 0
    out = capsys.readouterr().out
    # the by-hand table above, as names: the model's (RAF-DB) class = the dataset's (AffectNet) class
    pairs = ", ".join(f"{RAF_DB_CLASSES[index]}={name}"
                      for index, name in zip(RAFDB_INDEX_OF_AFFECTNET, AFFECTNET7_CLASSES))
    assert f"matched to AffectNet-7's by name ({pairs})" in out
