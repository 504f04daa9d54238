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
import utils.training_state
from helpers import FOLDER_CLASSES as CLASSES
from helpers import folder_dataset
from helpers import tiny_eval_args as eval_args
from helpers import tiny_training_args as args
from models import build_model, load_weights
from utils.checkpoint import read_checkpoint
from utils.train import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def data(folder_data):
    """The session's 3-class folder dataset (4 train, 2 test images a class); read only."""
    return folder_data


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
    assert load_weights(model, read_checkpoint(run / "last.pth")).source_format == "ours"


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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
    assert "at step 0" in out and ".png" in out and "No checkpoint had been saved yet" in out
    # nothing was trained: the failed start leaves no folder that would block --output-dir
    assert "removed the run folder" in out and not (tmp_path / "run").exists()


def test_evaluate_writes_predictions_of_our_checkpoint(data, trained_run, tmp_path, capsys):
    run = trained_run
    predictions = tmp_path / "pred.csv"
    assert main("qcs", eval_args(data, "--evaluate", str(run / "best.pth"), "--predictions", str(predictions))) == 0
    out = capsys.readouterr().out
    assert "test accuracy" in out and "mean class accuracy" in out and "rage" in out
    rows = list(csv.reader(open(predictions)))
    assert rows[0] == ["image", "label", "pred", "logit_0", "logit_1", "logit_2"]
    assert len(rows) == 1 + 3 * 2
    # one row per file on disk, named relative to the split folder, in the dataset's order
    on_disk = sorted(str(p.relative_to(data / "test")) for p in (data / "test").rglob("*.png"))
    assert sorted(row[0] for row in rows[1:]) == on_disk
    from data_preprocessing import build_dataset
    assert [row[0] for row in rows[1:]] == build_dataset("folder", "test", data_root=str(data)).image_names
    model = build_model("base", 3, size="tiny")
    load_weights(model, read_checkpoint(run / "best.pth"))
    model.eval()
    for row in rows[1:]:
        with torch.no_grad():  # the 32 px file itself, normalised by hand (no resize at 32 px)
            logits = model(normalised(Image.open(data / "test" / row[0]).convert("RGB"))[None])[0]
        assert int(row[1]) == CLASSES.index(Path(row[0]).parent.name)  # the label is the class folder
        assert int(row[2]) == int(logits.argmax())
        assert np.allclose([float(v) for v in row[3:]], logits.tolist(), atol=1e-5)
    assert main("qcs", eval_args(data, "--evaluate", str(run / "best.pth"), "--predictions", str(predictions))) == 2


def released_test_split(root, image_dir, list_file, names, shape, num_classes, seed=1):
    """Random test images in a released list-file layout (`<image name> <label>` lines)."""
    rng = np.random.default_rng(seed)
    (root / image_dir).mkdir(parents=True)
    for name in names:
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(root / image_dir / name)
    (root / list_file).write_text("".join(f"{name} {i % num_classes}\n" for i, name in enumerate(names)))
    return root


def raf_db(root, count=3):
    names = [f"test_{i:04d}_aligned.jpg" for i in range(count)]
    return released_test_split(root, "basic", "raf_db_basic_test.txt", names, (100, 100, 3), 7)


def ferplus(root, count=2):
    """Non-square images, so a square resize and an aspect-keeping one differ."""
    names = [f"fer{i:07d}.png" for i in range(count)]
    return released_test_split(root, "img", "ferplus_test.txt", names, (60, 90, 3), 8, seed=2)


def normalised(image):
    """An RGB PIL image as the ImageNet-normalised tensor, written out."""
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    return (x - mean[:, None, None]) / std[:, None, None]


def faithful_preprocess(path):
    """RAF-DB test transform written out: bilinear resize to 224×224, scale, ImageNet normalise."""
    return normalised(Image.open(path).convert("RGB").resize((224, 224), Image.BILINEAR))


def test_evaluating_authors_checkpoint_gives_their_logits(tmp_path):
    from functional_reference import reference_forward
    from stand_in_weights import authors_state_dict

    state_dict = authors_state_dict("QCS", 7)
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


@pytest.mark.slow  # over a few seconds on 2 CPU cores
def test_evaluate_follows_the_checkpoint_not_the_script(tmp_path, capsys):
    # a DCS FERPlus checkpoint evaluated by main_QCS.py gets DCS FERPlus's test transform:
    # a square resize to 234 then a 224 crop (QCS FERPlus would resize to 232)
    from stand_in_weights import authors_state_dict

    checkpoint = tmp_path / "authors_dcs_ferplus.pth"
    torch.save({"epoch": 3, "state_dict": authors_state_dict("DCS", 8), "best_acc": torch.tensor(91.4)}, checkpoint)
    data = ferplus(tmp_path / "FERPlus")
    predictions = tmp_path / "pred.csv"
    assert main("qcs", ["--dataset", "FERPlus", "--data-root", str(data), "--workers", "0",
                        "--evaluate", str(checkpoint), "--predictions", str(predictions)]) == 0
    out = capsys.readouterr().out
    assert "test transform: Resize((234, 234)) → CenterCrop(224) → ToTensor → Normalize" in out
    assert "DCS paper size, 8 classes" in out
    rows = list(csv.reader(open(predictions)))[1:]
    model = build_model("base", 8)
    load_weights(model, read_checkpoint(checkpoint))
    model.eval()
    image = Image.open(data / "img" / rows[0][0]).convert("RGB").resize((234, 234), Image.BILINEAR)
    with torch.no_grad():
        expected = model(normalised(image.crop((5, 5, 229, 229)))[None])[0]
    assert np.allclose([float(v) for v in rows[0][3:]], expected.tolist(), atol=1e-4)


@pytest.mark.parametrize("case", ["resume+evaluate", "missing data", "busy output", "wrong classes",
                                  "wrong arch", "cuda"])
def test_clear_errors_before_training(case, data, tmp_path, capsys, request):
    if case == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    # the finished run these cases need: a private copy of the session's one-epoch QCS run
    run = request.getfixturevalue("trained_run_copy") if case in ("busy output", "wrong arch") else None
    script = "qcs"
    if case == "resume+evaluate":
        argv, expected = ["--resume", "a.pth", "--evaluate", "b.pth"], "cannot be used together"
    elif case == "missing data":
        argv, expected = args(tmp_path / "nowhere", "--epochs", "1"), "nowhere"
    elif case == "busy output":
        argv, expected = args(data, "--output-dir", str(run)), "already holds files of another run"
    elif case == "wrong classes":
        argv = ["--dataset", "demo", "--data-root", str(request.getfixturevalue("demo_root")), "--workers", "0",
                "--size", "tiny", "--evaluate", str(request.getfixturevalue("trained_run") / "last.pth")]
        expected = "no expression in common"  # calm, joy, rage against the demo's seven expressions
    elif case == "wrong arch":
        script, argv, expected = "dcs", ["--resume", str(run / "last.pth")], "QCS run"
    else:
        argv, expected = args(data, "--device", "cuda"), "CUDA is not available"
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} if run else None
    assert main(script, argv) == 2
    assert expected in capsys.readouterr().out
    if run:  # refused before anything was written into the finished run
        assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


def test_unknown_dataset_is_rejected_by_the_parser(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main("qcs", ["--dataset", "CK+"])
    assert exit_info.value.code == 2 and "CK+" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("script, extra", [("main_DCS.py", ()), ("main_QCS.py", ("--matrix", "s"))])
def test_two_process_ddp_on_cpu_stays_in_sync(script, extra, data, tmp_path, free_port):
    # "S only" QCS has no k: a parameter without gradient would make DDP fail
    run = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(free_port), str(ROOT / script), *args(data, "--epochs", "2", "--output-dir", str(run), *extra)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "2 ranks in sync: yes" in result.stdout
    assert "2 process(es)" in result.stdout
    assert len(read_checkpoint(run / "last.pth")["history"]) == 2


@pytest.mark.slow
def test_baseline_trains_the_base_branch_on_single_images(data, tmp_path, capsys):
    run = tmp_path / "run"
    assert main("qcs", args(data, "--baseline", "--epochs", "2", "--output-dir", str(run))) == 0
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert len(rows) == 2 and "loss_base_1" in rows[0] and "loss_cross_1" not in rows[0]
    assert float(rows[0]["loss"]) == pytest.approx(float(rows[0]["loss_base_1"]))
    checkpoint = read_checkpoint(run / "last.pth")
    assert checkpoint["config"]["arch"] == "base" and checkpoint["run_config"]["recipe_arch"] == "qcs"
    assert not any(k.startswith(("cross_", "base.")) for k in checkpoint["model"])
    # one step per image (batch 4, 12 train images): three steps an epoch
    assert checkpoint["optimizer"]["state"][0]["step"].item() == 2 * 3
    assert main("qcs", ["--resume", str(run / "last.pth"), "--epochs", "3"]) == 0
    assert len(read_checkpoint(run / "last.pth")["history"]) == 3
    assert main("dcs", eval_args(data, "--evaluate", str(run / "best.pth"))) == 0
    assert "test accuracy" in capsys.readouterr().out


@pytest.mark.slow
def test_baseline_resume_is_bit_exact(data, tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert main("dcs", args(data, "--baseline", "--epochs", "2", "--output-dir", str(straight))) == 0
    assert main("dcs", args(data, "--baseline", "--epochs", "1", "--output-dir", str(split))) == 0
    assert main("dcs", ["--resume", str(split / "last.pth"), "--epochs", "2"]) == 0
    a, b = read_checkpoint(straight / "last.pth"), read_checkpoint(split / "last.pth")
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key


def test_pretrained_takes_only_the_backbone_of_any_checkpoint(data, trained_run, tmp_path, capsys):
    source = trained_run  # a QCS trained one epoch
    saved = read_checkpoint(source / "best.pth")["model"]
    backbone = {k: v for k, v in saved.items() if k.startswith("base.backbone.")}
    from models import load_backbone
    fresh = build_model("base", 3, size="tiny")
    filled, source_format = load_backbone(fresh, read_checkpoint(source / "best.pth"))
    assert (filled, source_format) == (len(backbone), "ours")
    for key, value in fresh.state_dict().items():
        if key.startswith("backbone."):
            assert torch.equal(value, backbone["base." + key]), key
    assert not torch.equal(fresh.vit.head.classifier.weight, saved["base.vit.head.classifier.weight"])
    run = tmp_path / "run"
    assert main("dcs", args(data, "--epochs", "1", "--output-dir", str(run)) + [
        "--pretrained", str(source / "best.pth")]) == 0
    assert f"{len(backbone)} backbone tensors filled" in (run / "log.txt").read_text()
    not_weights = tmp_path / "not_weights.pth"
    torch.save({"head.weight": torch.zeros(3, 4)}, not_weights)
    capsys.readouterr()
    refused = tmp_path / "refused"
    assert main("dcs", args(data, "--epochs", "1", "--pretrained", str(not_weights),
                            "--output-dir", str(refused))) == 2
    assert "holds no IR50 backbone tensors" in capsys.readouterr().out
    assert not refused.exists()  # refused before any run folder is made


@pytest.mark.slow
def test_resume_from_an_absolute_path_and_another_directory(data, tmp_path, monkeypatch):
    run = tmp_path / "runs" / "first"
    monkeypatch.chdir(tmp_path)
    assert main("dcs", args(data, "--epochs", "1", "--output-dir", "runs/first")) == 0
    moved = tmp_path / "elsewhere" / "moved"
    moved.parent.mkdir()
    run.rename(moved)
    monkeypatch.chdir(ROOT)
    assert main("dcs", ["--resume", str(moved / "last.pth"), "--epochs", "2"]) == 0
    assert read_checkpoint(moved / "last.pth")["epoch"] == 2
    assert len(list(csv.DictReader(open(moved / "metrics.csv")))) == 2


def test_resume_refuses_an_explicit_flag_that_differs_even_at_its_default(data, tmp_path, capsys):
    run = tmp_path / "run"
    assert main("dcs", args(data, "--epochs", "1", "--rho", "0.1", "--output-dir", str(run))) == 0
    capsys.readouterr()
    assert main("dcs", ["--resume", str(run / "last.pth"), "--rho", "0.05", "--epochs", "2"]) == 2
    assert "--rho 0.05 (saved: 0.1)" in capsys.readouterr().out
    assert main("dcs", ["--resume", str(run / "last.pth"), "--rho", "0.1", "--epochs", "2"]) == 0


@pytest.mark.parametrize("flag, value", [
    ("--lr", "-1"), ("--lr", "0"), ("--rho", "-0.1"), ("--gamma", "0"), ("--gamma", "1.5"),
    ("--drop", "1"), ("--cross-drop", "-0.2"), ("--temperature", "0"), ("--distill-weight", "-1"),
    ("--image-size", "8"), ("-b", "0"), ("--workers", "-1"), ("--epochs", "0"), ("--lr", "nan"),
    ("--save-every", "-5"), ("--print-freq", "-1")])
def test_numeric_options_are_checked_before_anything_starts(flag, value, data, tmp_path, capsys):
    run = tmp_path / "run"
    assert main("qcs", args(data, "--epochs", "1", "--output-dir", str(run), flag, value)) == 2
    out = capsys.readouterr().out.strip().splitlines()
    name = "--batch-size" if flag == "-b" else flag
    assert len(out) == 1 and out[0].split(" ", 1)[1].startswith(f"error: {name} must be"), out
    assert not run.exists()


def test_a_file_that_is_not_a_checkpoint_gets_one_line(data, tmp_path, capsys):
    bogus = tmp_path / "notes.pth"
    bogus.write_text("these are not weights")
    for option, options in (("--resume", args), ("--evaluate", eval_args)):
        assert main("qcs", options(data, option, str(bogus))) == 2
        out = capsys.readouterr().out.strip().splitlines()
        assert len(out) == 1 and "is not a PyTorch checkpoint" in out[0] and "weights_only" not in out[0]


def test_progress_lines_go_to_the_log_file(data, tmp_path):
    run = tmp_path / "run"
    assert main("dcs", args(data, "--epochs", "2", "--print-freq", "1", "--output-dir", str(run))) == 0
    lines = [line for line in (run / "log.txt").read_text().splitlines() if " step " in line]
    assert len(lines) == 2 * 3  # 12 images, batch 4: three steps an epoch
    assert "epoch 1/2  step 1/3  loss " in lines[0]
    for part in ("images/s", "lr 0.001", "eta epoch", ", run "):
        assert part in lines[0], lines[0]
    assert "epoch 2/2  step 3/3" in lines[-1] and "eta epoch 0s, run 0s" in lines[-1]


@pytest.mark.slow
def test_mid_epoch_saves_resume_bit_exact_with_whole_epoch_metrics(data, tmp_path, monkeypatch):
    straight, saving, copy = tmp_path / "straight", tmp_path / "saving", tmp_path / "copy"
    assert main("qcs", args(data, "--epochs", "2", "--output-dir", str(straight))) == 0
    real_save, copies = utils.training_state.atomic_save, []

    def save_and_keep_mid_epoch(checkpoint, path):
        real_save(checkpoint, path)
        if (checkpoint["epoch"], checkpoint["step"]) == (1, 2):  # second epoch, after step 2 of 3
            copy.mkdir()
            real_save(checkpoint, copy / "last.pth")
            copies.append(path)

    monkeypatch.setattr(utils.training_state, "atomic_save", save_and_keep_mid_epoch)
    assert main("qcs", args(data, "--epochs", "2", "--save-every", "1e-9", "--output-dir", str(saving))) == 0
    assert copies, "no mid-epoch checkpoint was written"
    monkeypatch.setattr(utils.training_state, "atomic_save", real_save)
    # the copy is not a run folder: it continues in a new one
    branch = tmp_path / "branch"
    assert main("qcs", ["--resume", str(copy / "last.pth"), "--output-dir", str(branch)]) == 0
    expected = read_checkpoint(straight / "last.pth")
    for run in (saving, branch):
        got = read_checkpoint(run / "last.pth")
        for key, value in expected["model"].items():
            assert torch.equal(value, got["model"][key]), (run, key)
        for row, row_expected in zip(got["history"], expected["history"]):
            row, row_expected = dict(row), dict(row_expected)
            row.pop("epoch_time_s"), row_expected.pop("epoch_time_s")
            assert row == row_expected, run


def macro_f1_by_hand(labels, preds):
    """Macro-F1 in % over the classes that occur as a label or a prediction (an undefined
    precision or recall counts 0), from the per-image labels and predictions."""
    scores = []
    for k in sorted(set(labels.tolist()) | set(preds.tolist())):
        hits = np.sum((labels == k) & (preds == k))
        precision = hits / np.sum(preds == k) if np.any(preds == k) else 0.0
        recall = hits / np.sum(labels == k) if np.any(labels == k) else 0.0
        scores.append(2 * precision * recall / (precision + recall) if precision + recall else 0.0)
    return 100 * np.mean(scores)


def test_macro_f1_by_hand_on_a_worked_example():
    # a: 2 of 3 found, 1 false alarm → P 2/3, R 2/3, F1 2/3; b: 1 of 1, P 1/2 → F1 2/3; c: never hit → 0
    labels, preds = np.array([0, 0, 0, 1, 2]), np.array([0, 0, 1, 1, 0])
    assert macro_f1_by_hand(labels, preds) == pytest.approx(100 * (2 / 3 + 2 / 3 + 0) / 3)


def predictions_of(path):
    rows = list(csv.DictReader(open(path)))
    return np.array([int(r["label"]) for r in rows]), np.array([int(r["pred"]) for r in rows])


def test_logged_loss_includes_the_distillation_term(data, tmp_path):
    run = tmp_path / "run"
    assert main("dcs", args(data, "--epochs", "1", "--distill", "mse", "--distill-weight", "5",
                            "--output-dir", str(run))) == 0
    row = next(csv.DictReader(open(run / "metrics.csv")))
    cross_entropy = np.mean([float(row[k]) for k in row if k.startswith("loss_")])
    assert float(row["loss"]) > cross_entropy + 1e-6
    # the logged test scores are those of the epoch's weights: recomputed from their predictions
    predictions = tmp_path / "pred.csv"
    assert main("dcs", eval_args(data, "--evaluate", str(run / "last.pth"), "--predictions", str(predictions))) == 0
    labels, preds = predictions_of(predictions)
    assert float(row["test_acc"]) == pytest.approx(100 * np.mean(labels == preds))
    assert float(row["macro_f1"]) == pytest.approx(macro_f1_by_hand(labels, preds))


def test_evaluate_prints_the_report_and_writes_a_json_summary(data, trained_run, tmp_path, capsys):
    predictions = tmp_path / "pred.csv"
    assert main("qcs", eval_args(data, "--evaluate", str(trained_run / "best.pth"),
                                 "--predictions", str(predictions))) == 0
    out = capsys.readouterr().out
    assert "macro-F1" in out and "precision" in out and "test transform: Resize((32, 32))" in out
    summary = json.loads(predictions.with_suffix(".json").read_text())
    labels, preds = predictions_of(predictions)
    assert summary["accuracy"] == pytest.approx(100 * np.mean(labels == preds))
    assert summary["macro_f1"] == pytest.approx(macro_f1_by_hand(labels, preds))
    for k, name in enumerate(CLASSES):
        hits = np.sum((labels == k) & (preds == k))
        recall = hits / max(np.sum(labels == k), 1)
        assert summary["per_class"].get(name, {"recall": 0.0})["recall"] == pytest.approx(recall)


def _children(pid):
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                pass
    return found


def _rank_of(pid):
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    ranks = [item[5:].decode() for item in environ if item.startswith(b"RANK=")]
    return int(ranks[0]) if ranks else None


@pytest.mark.slow
def test_sigterm_to_one_ddp_rank_stops_both_at_the_same_step(tmp_path, free_port):
    data = folder_dataset(tmp_path / "data", train_per_class=12)
    run = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(free_port), str(ROOT / "main_DCS.py"),
               *args(data, "--epochs", "50", "--print-freq", "1", "--output-dir", str(run))]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, env=env)
    deadline = time.time() + 120
    while time.time() < deadline and not ((run / "log.txt").is_file()
                                          and "epoch 2/50" in (run / "log.txt").read_text()):
        time.sleep(0.2)
    workers = [pid for pid in _children(process.pid) if _rank_of(pid) == 1]
    assert workers, "rank 1 not found"
    os.kill(workers[0], signal.SIGTERM)
    try:
        output, _ = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        process.kill()
        raise AssertionError("the ranks hung after SIGTERM") from None
    checkpoint = read_checkpoint(run / "last.pth")
    log = (run / "log.txt").read_text()
    assert f"interrupted at epoch {checkpoint['epoch'] + 1}, step {checkpoint['step']}/" in log, output[-2000:]
    # 36 images, 18 per rank, batch 4: the saved sums cover both ranks' anchors of the epoch so far
    assert checkpoint["epoch"] < 50 and checkpoint["epoch_sums"]["anchors"] == 2 * min(4 * checkpoint["step"], 18)


@pytest.mark.slow
def test_sigterm_to_the_process_group_with_workers_writes_last_pth(tmp_path):
    # what a cluster scheduler does: SIGTERM to every process of the job, DataLoader workers included
    data = folder_dataset(tmp_path / "data", train_per_class=12)
    run = tmp_path / "run"
    command = [sys.executable, str(ROOT / "main_DCS.py"),
               *args(data, "--epochs", "50", "--print-freq", "1", "--output-dir", str(run)), "--workers", "1"]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and not ((run / "log.txt").is_file()
                                          and "step 2/9" in (run / "log.txt").read_text()):
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 130, output[-3000:]
    assert "Traceback" not in output and "resume with --resume" in output
    assert read_checkpoint(run / "last.pth")["step"] >= 2


# Runs the QCS script and writes, per rank, each epoch's start and every training group it loads
# (loading happens in the training process with --workers 0, one batch per step); with STOP_AT
# "E,N", rank 1 sends itself SIGTERM on loading its N-th group of epoch E (0-based).
RECORDING_SCRIPT = """
import json, os, signal, sys
sys.path.insert(0, {root!r})
from data_preprocessing.sampling import GroupDataset, GroupSampler
from utils.train import main

rank = int(os.environ.get("RANK", "0"))
record = open(os.environ["GROUPS_LOG"] + f".{{rank}}", "w")
stop_at = os.environ.get("STOP_AT")
stop_at = tuple(map(int, stop_at.split(","))) if stop_at else None
seen = {{"epoch": None, "count": 0}}
set_epoch, get_item = GroupSampler.set_epoch, GroupDataset.__getitem__

def recording_set_epoch(self, epoch, *rest):
    seen.update(epoch=epoch, count=0)
    record.write(f"epoch {{epoch}}\\n")
    return set_epoch(self, epoch, *rest)

def recording_get_item(self, group):
    seen["count"] += 1
    record.write(json.dumps(list(map(int, group))) + "\\n")
    record.flush()
    if rank == 1 and (seen["epoch"], seen["count"]) == stop_at:
        os.kill(os.getpid(), signal.SIGTERM)
    return get_item(self, group)

GroupSampler.set_epoch, GroupDataset.__getitem__ = recording_set_epoch, recording_get_item
sys.exit(main("qcs", sys.argv[1:]))
"""


def _recorded_groups(log, rank, epoch):
    """The groups rank `rank` loaded in epoch `epoch` (0-based), in order."""
    groups, current = [], None
    for line in Path(f"{log}.{rank}").read_text().splitlines():
        if line.startswith("epoch "):
            current = int(line.split()[1])
        elif current == epoch:
            groups.append(tuple(json.loads(line)))
    return groups


def _interleaved(first, second):
    """Two ranks' groups in the epoch's order: rank r holds every second group from the r-th."""
    return [group for pair in zip(first, second) for group in pair] + first[len(second):]


@pytest.mark.slow
def test_a_two_process_mid_epoch_stop_resumes_exactly_with_two_and_at_the_untrained_groups_with_one(
        tmp_path, free_port):
    # 15 images: 8 groups per rank (the last of rank 1 repeats the epoch's first), 3 steps of 3, 2, 2
    data = folder_dataset(tmp_path / "data", train_per_class=5)
    script = tmp_path / "recording_qcs.py"
    script.write_text(RECORDING_SCRIPT.format(root=str(ROOT)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("STOP_AT", None)

    def run(name, processes, *options, stop_at=None, expected_rc=0, port=free_port):
        launcher = [sys.executable] + (["-m", "torch.distributed.run", "--nproc_per_node", str(processes),
                                        "--master_port", str(port)] if processes > 1 else [])
        command = [*launcher, str(script), *options]
        run_env = {**env, "GROUPS_LOG": str(tmp_path / name), **({"STOP_AT": stop_at} if stop_at else {})}
        return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=run_env), expected_rc, tmp_path / name

    def finish(started):
        process, expected_rc, log = started
        output, _ = process.communicate(timeout=240)
        assert process.returncode == expected_rc, output[-3000:]
        return output, log

    settings = args(data, "-b", "3", "--epochs", "2")
    straight = run("straight", 2, *settings, "--output-dir", str(tmp_path / "straight"))
    stopped = run("stopped", 2, *settings, "--output-dir", str(tmp_path / "stopped"), stop_at="1,1",
                  expected_rc=1, port=free_port + 1 if free_port < 65535 else free_port - 1)
    _, straight_log = finish(straight)
    _, stopped_log = finish(stopped)  # torchrun reports a child's 130 as a failure
    mid_epoch = tmp_path / "stopped" / "last.pth"
    saved = read_checkpoint(mid_epoch)
    assert (saved["epoch"], saved["step"], saved["world_size"], saved["groups_done"]) == (1, 1, 2, 6)
    assert len(saved["rng_by_rank"]) == 2 and not torch.equal(saved["rng_by_rank"][0]["torch"],
                                                              saved["rng_by_rank"][1]["torch"])

    # two processes again: the run an uninterrupted one would have been, bit for bit
    again = run("again", 2, "--resume", str(mid_epoch), "--output-dir", str(tmp_path / "again"))
    alone = run("alone", 1, "--resume", str(mid_epoch), "--output-dir", str(tmp_path / "alone"))
    finish(again)
    alone_output, alone_log = finish(alone)
    expected = read_checkpoint(tmp_path / "straight" / "last.pth")
    got = read_checkpoint(tmp_path / "again" / "last.pth")
    for key, value in expected["model"].items():
        assert torch.equal(value, got["model"][key]), key
    for row, row_expected in zip(got["history"], expected["history"], strict=True):
        row, row_expected = dict(row), dict(row_expected)
        row.pop("epoch_time_s"), row_expected.pop("epoch_time_s")
        assert row == row_expected

    # one process: the second epoch's groups, each once, as the uninterrupted run ordered them
    epoch_order = _interleaved(_recorded_groups(straight_log, 0, 1), _recorded_groups(straight_log, 1, 1))
    before_stop = _interleaved(_recorded_groups(stopped_log, 0, 1), _recorded_groups(stopped_log, 1, 1))
    assert len(epoch_order) == 16 and len(before_stop) == 6
    assert before_stop + _recorded_groups(alone_log, 0, 1) == epoch_order[:15]
    assert "(saved by 2 process(es), continued by 1: the epoch goes on" in alone_output
    assert len(read_checkpoint(tmp_path / "alone" / "last.pth")["history"]) == 2
