"""Files written by the release before the settings schema still load, resume, replay and predict.

`tests/fixtures/release_run/` is a tiny QCS run (folder data, `--data-root data`, 2 epochs) and
`tests/fixtures/release_export/` its safetensors export, both written by that release; the
folder data is rebuilt here by `helpers.folder_dataset`, which made it then.
"""
import csv
import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from helpers import folder_dataset
from utils.checkpoint import load_checkpoint
from utils.inference import load_trained_model
from utils.train import main

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture
def release_workdir(tmp_path, monkeypatch, one_thread):
    """A working folder holding a copy of the released run and its data at the recorded `data`."""
    shutil.copytree(FIXTURES / "release_run", tmp_path / "release_run")
    folder_dataset(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def metric_rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_release_checkpoint_loads_with_its_settings():
    _, info = load_checkpoint(FIXTURES / "release_run" / "last.pth")
    assert (info.arch, info.size, info.num_classes, info.epoch) == ("qcs", "tiny", 3, 2)
    assert info.classes == ["calm", "joy", "rage"] and info.image_size == 32


def test_release_run_resumes_one_more_epoch(release_workdir):
    assert main("qcs", ["--resume", "release_run/last.pth", "--epochs", "3"]) == 0
    rows = metric_rows(release_workdir / "release_run" / "metrics.csv")
    released = metric_rows(FIXTURES / "release_run" / "metrics.csv")
    assert [row["epoch"] for row in rows] == ["1", "2", "3"]
    assert rows[:2] == released  # the history is continued, not rewritten
    assert float(rows[2]["lr"]) == pytest.approx(1e-3 * 0.98 ** 2)  # the saved schedule goes on


def test_release_config_replays(release_workdir):
    code = main("qcs", ["--config", "release_run/config.json", "--epochs", "1", "--output-dir", "replayed"])
    assert code == 0
    replayed = json.loads((release_workdir / "replayed" / "config.json").read_text())
    released = json.loads((FIXTURES / "release_run" / "config.json").read_text())
    for key in ("size", "image_size", "batch_size", "lr", "augmentation", "data_root", "anchor_divisor"):
        assert replayed[key] == released[key], key
    assert replayed["replayed_from"] == str((release_workdir / "release_run" / "config.json").resolve())
    assert replayed["replay_overrides"] == ["--epochs"]
    first = metric_rows(release_workdir / "replayed" / "metrics.csv")[0]
    released_first = metric_rows(FIXTURES / "release_run" / "metrics.csv")[0]
    assert float(first["loss"]) == pytest.approx(float(released_first["loss"]), rel=1e-3)


def test_release_export_gives_the_checkpoints_logits():
    exported = load_trained_model(FIXTURES / "release_export" / "model.safetensors")
    trained = load_trained_model(FIXTURES / "release_run" / "last.pth")
    assert exported.classes == trained.classes and exported.image_size == 32
    image = Image.new("RGB", (40, 40), (200, 30, 60))
    batch = exported.transform()(image).unsqueeze(0)
    assert torch.equal(batch, trained.transform()(image).unsqueeze(0))
    with torch.no_grad():
        assert torch.equal(exported.model(batch), trained.model(batch))
