"""The training entry points: run folder, exact resume, evaluation, interruption, errors, DDP."""
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import utils.engine
from models import build_model, load_weights, read_checkpoint
from utils.train import main

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ("calm", "joy", "rage")


def folder_dataset(root, train_per_class=4, test_per_class=2, side=32):
    rng = np.random.default_rng(0)
    for split, count in (("train", train_per_class), ("test", test_per_class)):
        for label, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
                pixels[..., label] = 255  # a learnable colour cue
                Image.fromarray(pixels).save(folder / f"{name}_{i}.png")
    return root


@pytest.fixture
def data(tmp_path):
    return folder_dataset(tmp_path / "data")


def args(data, *extra):
    return ["--dataset", "folder", "--data-root", str(data), "--size", "tiny", "--image-size", "32",
            "--workers", "0", "--pretrained", "none", "-b", "4", "--lr", "1e-3", *extra]


def test_training_leaves_a_complete_run_folder(data, tmp_path):
    run = tmp_path / "run"
    assert main("dcs", args(data, "--epochs", "2", "--output-dir", str(run))) == 0
    for name in ("config.json", "log.txt", "metrics.csv", "last.pth", "best.pth", "losses.png",
                 "confusion_best.png"):
        assert (run / name).is_file(), name
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert {"lr", "loss_base_1", "loss_base_2", "loss_cross_1", "loss_cross_2", "train_acc",
            "test_acc", "best_acc", "epoch_time_s"} <= set(rows[0])
    assert float(rows[1]["lr"]) == pytest.approx(1e-3 * 0.98)  # ExponentialLR stepped once per epoch
    config = json.loads((run / "config.json").read_text())
    assert config["arch"] == "dcs" and config["epochs"] == 2 and config["rho"] == 0.05
    checkpoint = read_checkpoint(run / "last.pth")
    assert checkpoint["epoch"] == 2 and checkpoint["classes"] == list(CLASSES)
    model = build_model("dcs", 3, size="tiny")
    assert load_weights(model, run / "last.pth").source_format == "ours"


def test_resume_continues_bit_for_bit(data, tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert main("qcs", args(data, "--epochs", "2", "--output-dir", str(straight))) == 0
    assert main("qcs", args(data, "--epochs", "1", "--output-dir", str(split))) == 0
    assert main("qcs", ["--resume", str(split / "last.pth"), "--epochs", "2"]) == 0
    a, b = read_checkpoint(straight / "last.pth"), read_checkpoint(split / "last.pth")
    assert a["epoch"] == b["epoch"] == 2
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    drop_time = [{k: v for k, v in row.items() if k != "epoch_time_s"} for row in a["history"]]
    assert drop_time == [{k: v for k, v in row.items() if k != "epoch_time_s"} for row in b["history"]]


def test_interrupt_mid_epoch_writes_resumable_checkpoint(data, tmp_path, monkeypatch):
    run = tmp_path / "run"
    real_loss, calls = utils.engine.group_loss, []

    def loss_then_ctrl_c(*a, **k):
        calls.append(1)
        if len(calls) == 3:  # first pass of the second step
            os.kill(os.getpid(), signal.SIGINT)
        return real_loss(*a, **k)

    monkeypatch.setattr(utils.engine, "group_loss", loss_then_ctrl_c)
    assert main("dcs", args(data, "--epochs", "2", "-b", "2", "--output-dir", str(run))) == 130
    checkpoint = read_checkpoint(run / "last.pth")
    assert (checkpoint["epoch"], checkpoint["step"]) == (0, 2)
    monkeypatch.setattr(utils.engine, "group_loss", real_loss)
    assert main("dcs", ["--resume", str(run / "last.pth")]) == 0
    checkpoint = read_checkpoint(run / "last.pth")
    assert checkpoint["epoch"] == 2 and len(checkpoint["history"]) == 2


def test_killed_run_keeps_a_loadable_checkpoint_and_resumes(tmp_path):
    data = folder_dataset(tmp_path / "data", train_per_class=12)
    run = tmp_path / "run"
    command = [sys.executable, str(ROOT / "main_DCS.py"), *args(data, "--epochs", "30", "--output-dir", str(run))]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (run / "last.pth").exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    time.sleep(0.3)
    process.kill()
    process.wait()
    checkpoint = read_checkpoint(run / "last.pth")
    assert 1 <= checkpoint["epoch"] < 30
    result = subprocess.run([sys.executable, str(ROOT / "main_DCS.py"), "--resume", str(run / "last.pth"),
                             "--epochs", str(checkpoint["epoch"] + 1)], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert read_checkpoint(run / "last.pth")["epoch"] == checkpoint["epoch"] + 1


def test_non_finite_loss_stops_with_step_images_and_checkpoint(data, tmp_path, monkeypatch, capsys):
    def nan_loss(outputs, y, y_n, **kwargs):
        loss = sum(o.sum() for o in outputs) * float("nan")
        return loss, torch.zeros(len(outputs))

    monkeypatch.setattr(utils.engine, "group_loss", nan_loss)
    assert main("dcs", args(data, "--epochs", "1", "--output-dir", str(tmp_path / "run"))) == 1
    out = capsys.readouterr().out
    assert "at step 0" in out and ".png" in out and "last.pth" in out
    assert not (tmp_path / "run" / "last.pth").exists()


def test_evaluate_writes_predictions_of_our_checkpoint(data, tmp_path, capsys):
    run = tmp_path / "run"
    assert main("qcs", args(data, "--epochs", "1", "--output-dir", str(run))) == 0
    predictions = tmp_path / "pred.csv"
    assert main("qcs", args(data, "--evaluate", str(run / "best.pth"), "--predictions", str(predictions))) == 0
    out = capsys.readouterr().out
    assert "test accuracy" in out and "mean class accuracy" in out and "rage" in out
    rows = list(csv.reader(open(predictions)))
    assert rows[0] == ["image", "label", "pred", "logit_0", "logit_1", "logit_2"]
    assert len(rows) == 1 + 3 * 2
    model = build_model("base", 3, size="tiny")
    load_weights(model, run / "best.pth")
    model.eval()
    from data_preprocessing import build_dataset, test_transform
    test_set = build_dataset("folder", "test", data_root=str(data), transform=test_transform(size=32))
    for row, (image, label) in zip(rows[1:], test_set):
        logits = model(image[None])[0]
        assert row[0] == test_set.image_names[test_set.image_names.index(row[0])]
        assert int(row[1]) == label and int(row[2]) == int(logits.argmax())
        assert np.allclose([float(v) for v in row[3:]], logits.tolist(), atol=1e-5)
    assert main("qcs", args(data, "--evaluate", str(run / "best.pth"), "--predictions", str(predictions))) == 2


def raf_db(root, count=3):
    """A RAF-DB release layout with `count` test images (and one train image)."""
    rng = np.random.default_rng(1)
    (root / "basic").mkdir(parents=True)
    lines = []
    for i in range(count):
        name = f"test_{i:04d}_aligned.jpg"
        Image.fromarray(rng.integers(0, 256, (100, 100, 3), dtype=np.uint8)).save(root / "basic" / name)
        lines.append(f"{name} {i % 7}")
    (root / "raf_db_basic_test.txt").write_text("\n".join(lines) + "\n")
    return root


def faithful_preprocess(path):
    """RAF-DB test transform written out: bilinear resize to 224×224, scale, ImageNet normalise."""
    image = Image.open(path).convert("RGB").resize((224, 224), Image.BILINEAR)
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    return (x - mean[:, None, None]) / std[:, None, None]


def test_evaluating_authors_checkpoint_gives_their_logits(shared_dir, tmp_path):
    sys.path.insert(0, str(shared_dir / "fixtures"))
    from official_weights import make_state_dict
    from functional_reference import reference_forward

    state_dict = make_state_dict(str(shared_dir / "fixtures" / "official_keys_QCS_7cls_raf_db.json"))
    checkpoint = tmp_path / "authors_qcs.pth"
    torch.save({"epoch": 10, "state_dict": state_dict, "best_acc": torch.tensor(92.5)}, checkpoint)
    data = raf_db(tmp_path / "RAF-DB")
    predictions = tmp_path / "pred.csv"
    assert main("qcs", ["--dataset", "RAF-DB", "--data-root", str(data), "--workers", "0",
                        "--evaluate", str(checkpoint), "--predictions", str(predictions)]) == 0
    rows = list(csv.reader(open(predictions)))[1:]
    images = torch.stack([faithful_preprocess(data / "basic" / row[0]) for row in rows])
    expected = reference_forward(state_dict, [images], 7)[0]
    got = torch.tensor([[float(v) for v in row[3:]] for row in rows])
    assert torch.allclose(got, expected, atol=2e-4), (got - expected).abs().max()


@pytest.mark.parametrize("case", ["resume+evaluate", "missing data", "busy output", "wrong classes",
                                  "wrong arch", "cuda"])
def test_clear_errors_before_training(case, data, tmp_path, capsys):
    run = tmp_path / "run"
    if case in ("wrong classes", "wrong arch", "busy output"):
        assert main("dcs", args(data, "--epochs", "1", "--output-dir", str(run))) == 0
    argv, expected = {
        "resume+evaluate": (["--resume", "a.pth", "--evaluate", "b.pth"], "cannot be used together"),
        "missing data": (args(tmp_path / "nowhere", "--epochs", "1"), "nowhere"),
        "busy output": (args(data, "--output-dir", str(run)), "already holds files of another run"),
        "wrong classes": (["--dataset", "demo", "--data-root", str(tmp_path / "demo"), "--workers", "0",
                           "--evaluate", str(run / "last.pth"), "--size", "tiny"], "3 classes"),
        "wrong arch": (["--resume", str(run / "last.pth")], "DCS run"),
        "cuda": (args(data, "--device", "cuda"), "CUDA is not available"),
    }[case]
    if case == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert main("qcs", argv) == 2
    assert expected in capsys.readouterr().out


def test_unknown_dataset_is_rejected_by_the_parser(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main("qcs", ["--dataset", "CK+"])
    assert exit_info.value.code == 2 and "CK+" in capsys.readouterr().err


def test_two_process_ddp_on_cpu_stays_in_sync(tmp_path):
    data = folder_dataset(tmp_path / "data")
    run = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               "29517", str(ROOT / "main_DCS.py"), *args(data, "--epochs", "2", "--output-dir", str(run))]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "2 ranks in sync: yes" in result.stdout
    assert "2 process(es)" in result.stdout
    assert len(read_checkpoint(run / "last.pth")["history"]) == 2
