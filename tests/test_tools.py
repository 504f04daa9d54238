"""The tools around a trained model (`python -m utils.tools ...`): predict, heatmaps, export, inspect.

Models are tiny and untrained; every number is checked against a computation written here
(hand-made preprocessing, the model's own forward, invariants of the CSA weights).
"""
import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from authors_format import as_authors, write_authors_checkpoint
from data_preprocessing.demo import DEMO_CLASSES
from models import build_model
from utils.tools import cli as tools
from utils.tools import heatmaps

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[2] / "shared"
IMAGE_SIZE = 64
MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def our_checkpoint(model, classes=DEMO_CLASSES):
    return {"format": "qcs-fer-checkpoint", "config": model.config, "model": model.state_dict(),
            "classes": list(classes), "epoch": 3, "best_acc": 55.0, "best_epoch": 2,
            "run_config": {"dataset": "demo", "image_size": IMAGE_SIZE, "size": "tiny",
                           "augmentation": {"kind": "A"}}}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Tiny QCS and DCS models (eval mode) and their checkpoints in this project's format."""
    folder = tmp_path_factory.mktemp("checkpoints")
    out = {}
    for seed, arch in enumerate(("qcs", "dcs")):
        torch.manual_seed(seed)
        model = build_model(arch, 7, size="tiny").eval()
        with torch.no_grad():  # spread the untrained logits, so small input changes show in the probabilities
            model.base.vit.head.classifier.weight.mul_(300)
        path = folder / f"{arch}.pth"
        torch.save(our_checkpoint(model), path)
        out[arch] = (model, path)
    return out


# -------------------------------------------------------------------- reference computations for the tests

def preprocess(image, side=IMAGE_SIZE):
    """Resize((side, side)) → [0, 1] → ImageNet normalisation, written out by hand."""
    array = np.asarray(image.convert("RGB").resize((side, side), Image.BILINEAR), dtype=np.float64) / 255
    return torch.from_numpy(((array - MEAN) / STD).transpose(2, 0, 1)).float()


@torch.no_grad()
def probabilities_of(model, images):
    return torch.softmax(model.base(torch.stack([preprocess(im) for im in images])), dim=1)


def authors_checkpoint(path, model, monkeypatch):
    write_authors_checkpoint(path, as_authors(model), monkeypatch)


def run_tool(capsys, *argv):
    code = tools.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def image_folder(demo_root, tmp_path, count=5):
    """A folder (with a sub-folder) of demo test images, a corrupt PNG and a text file."""
    folder = tmp_path / "faces"
    (folder / "more").mkdir(parents=True)
    sources = sorted((demo_root / "images" / "test").glob("*.png"))[:count]
    for i, source in enumerate(sources):
        shutil.copy(source, folder / ("more" if i % 2 else ".") / source.name)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 4)
    (folder / "notes.txt").write_text("not an image\n")
    return folder


# -------------------------------------------------------------------- predict

def test_predict_probabilities_match_the_model_and_bad_files_are_skipped(trained, demo_root, tmp_path, capsys):
    model, checkpoint = trained["qcs"]
    folder = image_folder(demo_root, tmp_path)
    out_json, out_csv = tmp_path / "p.json", tmp_path / "p.csv"
    code, out, err = run_tool(capsys, "predict", "--checkpoint", checkpoint, "--top-k", 7, "--batch-size", 2,
                              "--device", "cpu", "--no-detect", "--json", out_json, "--csv", out_csv, folder)
    assert code == 0
    assert "broken.png" in err and "notes.txt" in err
    document = json.loads(out_json.read_text())
    assert document["classes"] == DEMO_CLASSES and document["image_size"] == IMAGE_SIZE
    rows = {Path(r["image"]).name: r for r in document["predictions"]}
    assert len(document["predictions"]) == 7
    assert "not an image file" in rows.pop("notes.txt")["error"]
    assert "cannot read image" in rows.pop("broken.png")["error"]
    names = sorted(rows)
    expected = probabilities_of(model, [Image.open(rows[n]["image"]) for n in names])
    for name, reference in zip(names, expected):
        row = rows[name]
        probabilities = torch.tensor([row["probabilities"][c] for c in DEMO_CLASSES])
        assert probabilities.sum().item() == pytest.approx(1.0, abs=1e-5)
        torch.testing.assert_close(probabilities, reference, atol=1e-5, rtol=0)
        assert row["top_k"][0]["class"] == DEMO_CLASSES[int(reference.argmax())]
        ranked = [entry["probability"] for entry in row["top_k"]]
        assert ranked == sorted(ranked, reverse=True) and len(ranked) == 7
        assert f"{Path(row['image']).name}: {row['top_k'][0]['class']}" in out

    with open(out_csv, newline="") as handle:
        records = list(csv.DictReader(handle))
    assert len(records) == 7 and [r["error"] != "" for r in records].count(True) == 2
    ok = [r for r in records if not r["error"]]
    assert all(r["class_1"] == rows[Path(r["image"]).name]["top_k"][0]["class"] for r in ok)

    before = out_json.read_text()
    code, _, err = run_tool(capsys, "predict", "--checkpoint", checkpoint, "--json", out_json, folder)
    assert code == 2 and "refusing to overwrite" in err and out_json.read_text() == before
    assert "--overwrite" not in err  # predict has no such option


def test_predict_authors_checkpoint_needs_class_names(trained, demo_root, tmp_path, capsys, monkeypatch):
    model, _ = trained["qcs"]
    checkpoint = tmp_path / "authors.pth"
    authors_checkpoint(checkpoint, model, monkeypatch)
    image = sorted((demo_root / "images" / "test").glob("*.png"))[0]
    code, _, err = run_tool(capsys, "predict", "--checkpoint", checkpoint, image)
    assert code == 2 and "--dataset" in err and "--classes" in err
    code, _, err = run_tool(capsys, "predict", "--checkpoint", checkpoint, "--classes", "a,b,c", image)
    assert code == 2 and "3 classes" in err and "7-class head" in err
    out_json = tmp_path / "p.json"
    code, _, _ = run_tool(capsys, "predict", "--checkpoint", checkpoint, "--dataset", "RAF-DB", "--no-detect",
                          "--image-size", IMAGE_SIZE, "--json", out_json, image)
    assert code == 0
    row = json.loads(out_json.read_text())["predictions"][0]
    reference = probabilities_of(model, [Image.open(image)])[0]
    raf_db = ["Surprise", "Fear", "Disgust", "Happiness", "Sadness", "Anger", "Neutral"]  # the published label order
    torch.testing.assert_close(torch.tensor([row["probabilities"][c] for c in raf_db]), reference,
                               atol=1e-5, rtol=0)


def test_predict_on_fer2013_images(trained, tmp_path, capsys):
    if not SHARED.is_dir():
        pytest.skip("../shared is not present")
    test_dir = SHARED / "data" / "fer2013-mini" / "test"
    images = [sorted((test_dir / c).glob("*.jpg"))[0] for c in ("angry", "happy", "surprise")]
    model, checkpoint = trained["dcs"]
    out_json = tmp_path / "fer.json"
    fer_classes = "angry,disgust,fear,happy,sad,surprise,neutral"
    code, _, _ = run_tool(capsys, "predict", "--checkpoint", checkpoint, "--classes", fer_classes, "--no-detect",
                          "--top-k", 2, "--json", out_json, *images)
    assert code == 0
    rows = json.loads(out_json.read_text())["predictions"]
    assert [r["image"] for r in rows] == [str(p) for p in images]
    assert Image.open(images[0]).mode == "L"  # grayscale 48×48 faces go through as RGB
    expected = probabilities_of(model, [Image.open(p) for p in images])
    for row, reference in zip(rows, expected):
        probabilities = torch.tensor(list(row["probabilities"].values()))
        assert probabilities.sum().item() == pytest.approx(1.0, abs=1e-5)
        torch.testing.assert_close(probabilities, reference, atol=1e-5, rtol=0)
        assert len(row["top_k"]) == 2


def test_predict_checks_its_outputs_before_loading_the_model(trained, demo_root, tmp_path, capsys, monkeypatch):
    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the outputs were checked")

    monkeypatch.setattr("utils.tools.classify.load_trained_model", no_model)
    image = sorted((demo_root / "images" / "test").glob("*.png"))[0]
    checkpoint = trained["qcs"][1]
    missing = tmp_path / "missing" / "p.csv"
    code, _, err = run_tool(capsys, "predict", "--checkpoint", checkpoint, "--csv", missing, image)
    assert code == 2 and err == f"error: --csv {missing}: folder {missing.parent} does not exist\n"
    code, _, err = run_tool(capsys, "predict", "--checkpoint", checkpoint, "--json", tmp_path, image)
    assert code == 2 and err == f"error: --json {tmp_path}: is a folder, not a file\n"
    assert sorted(tmp_path.iterdir()) == []


# -------------------------------------------------------------------- heatmaps

@pytest.mark.parametrize("arch", ["qcs", pytest.param("dcs", marks=pytest.mark.slow)])
def test_heatmaps_png_grids_for_qcs_and_dcs(arch, trained, demo_root, tmp_path, capsys):
    model, checkpoint = trained[arch]
    group_png, grid_png = tmp_path / "group.png", tmp_path / "grid.png"
    code, out, _ = run_tool(capsys, "heatmaps", "--checkpoint", checkpoint, "--dataset", "demo",
                            "--data-root", demo_root, "--anchor", 3, "--out", group_png,
                            "--class-grid", grid_png, "--samples-per-class", 1, "--device", "cpu")
    assert code == 0
    num_images = {"qcs": 4, "dcs": 2}[arch]
    width, height = Image.open(group_png).size
    assert width * num_images == height * 5  # rows: the group; columns: face, 3 levels, fused
    width, height = Image.open(grid_png).size
    assert width == height  # 7×7 class cells
    assert "anchor #3: " in out
    code, _, err = run_tool(capsys, "heatmaps", "--checkpoint", checkpoint, "--dataset", "demo",
                            "--data-root", demo_root, "--out", group_png)
    assert code == 2 and "refusing to overwrite" in err and "--overwrite" in err
    assert len(err.strip().splitlines()) == 1


def demo_test_split(demo_root):
    from data_preprocessing import build_dataset, test_transform
    return build_dataset("demo", "test", demo_root, transform=test_transform(image_size=IMAGE_SIZE))


def test_groups_follow_the_sampling_rules(demo_root):
    labels = demo_test_split(demo_root).labels
    for seed in range(5):
        anchor, positive, negative, negative2 = heatmaps.draw_group(labels, 4, seed=seed)
        assert positive != anchor and labels[positive] == labels[anchor]
        assert labels[negative] != labels[anchor]
        assert negative2 != negative and labels[negative2] == labels[negative]
        assert heatmaps.draw_group(labels, 4, seed=seed) == [anchor, positive, negative, negative2]
    assert heatmaps.draw_group(labels, 2, anchor=10, seed=1)[0] == 10


def test_weight_maps_sum_to_one_and_figures_have_the_grid(trained, demo_root):
    model, _ = trained["qcs"]
    dataset = demo_test_split(demo_root)
    group = heatmaps.draw_group(dataset.labels, 4, anchor=0, seed=0)
    images = [dataset[i][0][None] for i in group]
    grids = heatmaps.level_maps(model, images)
    side = int(np.ceil(56 / 16))  # the tiny model works at 56 px: 4×4 tokens per level
    assert grids.shape == (3, 4, 1, side, side)
    torch.testing.assert_close(grids.sum(dim=(-2, -1)), torch.ones(3, 4, 1), atol=1e-5, rtol=0)
    assert (grids >= 0).all()

    # the class grid's token shortcut gives what csa_maps gives on the same two images
    tokens = heatmaps.base_tokens(model, dataset, group[:2], torch.device("cpu"))
    shortcut = heatmaps.pair_weights_from_tokens(model, tokens[group[0]], tokens[group[1]])
    torch.testing.assert_close(shortcut, model.csa_maps(*images[:2]), atol=1e-6, rtol=0)

    faces = [heatmaps.display_image(x[0]) for x in images]
    figure = heatmaps.group_figure(faces, grids[:, :, 0], ["a", "p", "n", "n2"])
    assert len(figure.axes) == 4 * 5
    fused, counts, mean_faces = heatmaps.class_grid_maps(model, dataset, 1, 0, torch.device("cpu"))
    assert fused.shape == (7, 7, side, side) and (counts == 1).all()
    torch.testing.assert_close(fused.sum(dim=(-2, -1)), torch.ones(7, 7), atol=1e-5, rtol=0)
    figure = heatmaps.class_grid_figure(mean_faces, fused, DEMO_CLASSES)
    assert len(figure.axes) == 7 * 7 + 1  # the cells and the shared colour bar


def test_heatmaps_refuse_a_model_without_cross_module(trained, demo_root, tmp_path, capsys):
    path = tmp_path / "base.pth"
    torch.save(trained["qcs"][0].base.state_dict(), path)
    code, _, err = run_tool(capsys, "heatmaps", "--checkpoint", path, "--dataset", "demo",
                            "--data-root", demo_root, "--out", tmp_path / "x.png")
    assert code == 2 and "without a cross module" in err


def test_heatmaps_refuse_outputs_that_clash_or_cannot_be_written_before_working(trained, demo_root, tmp_path,
                                                                                capsys, monkeypatch):
    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the outputs were checked")

    monkeypatch.setattr(heatmaps, "load_trained_model", no_model)
    common = ["heatmaps", "--checkpoint", trained["qcs"][1], "--dataset", "demo", "--data-root", demo_root]
    same = tmp_path / "figure.png"
    code, _, err = run_tool(capsys, *common, "--out", same, "--class-grid", tmp_path / "." / "figure.png")
    assert code == 2 and err.count("\n") == 1 and "--out and --class-grid both name" in err
    blocker = tmp_path / "notes.txt"
    blocker.write_text("x")
    code, _, err = run_tool(capsys, *common, "--out", tmp_path / "ok.png", "--class-grid", blocker / "grid.png")
    assert code == 2 and err == f"error: --class-grid {blocker / 'grid.png'}: {blocker} is not a folder\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


# -------------------------------------------------------------------- export

@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_export_round_trip_gives_the_checkpoint_logits(trained, tmp_path, capsys):
    model, checkpoint = trained["dcs"]
    out = tmp_path / "exported"
    code, stdout, _ = run_tool(capsys, "export", "--checkpoint", checkpoint, "--out", out)
    assert code == 0
    info = json.loads((out / "model_info.json").read_text())
    assert info["classes"] == DEMO_CLASSES and info["image_size"] == IMAGE_SIZE and info["size"] == "tiny"
    assert info["parameters"] == sum(p.numel() for p in model.base.parameters())
    assert all(diff < 1e-5 for diff in info["max_abs_diff"].values()) and len(info["max_abs_diff"]) == 3
    images = torch.rand(5, 3, IMAGE_SIZE, IMAGE_SIZE) * 4 - 2
    with torch.no_grad():
        reference = model(images)  # the DCS model with one input: base logits
        traced = torch.jit.load(str(out / "model_torchscript.pt"))
        program = torch.export.load(str(out / "model_exported.pt2")).module()
        torch.testing.assert_close(traced(images), reference, atol=1e-5, rtol=0)
        torch.testing.assert_close(program(images), reference, atol=1e-5, rtol=0)
        base = build_model("base", 7, size="tiny").eval()
        base.load_state_dict(torch.load(out / "base_state_dict.pth", weights_only=True))
        torch.testing.assert_close(base(images), reference, atol=0, rtol=0)
    assert "max abs diff" in stdout and "parameters" in stdout
    code, _, err = run_tool(capsys, "export", "--checkpoint", checkpoint, "--out", out, "--format", "torchscript")
    assert code == 2 and "refusing to overwrite" in err


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_export_overwrite_with_a_narrower_format_leaves_only_what_model_info_lists(trained, tmp_path, capsys):
    checkpoint = trained["dcs"][1]
    out = tmp_path / "exported"
    out.mkdir()
    (out / "model_exported.pt2").write_bytes(b"an earlier export")  # an earlier --format export run
    code, _, err = run_tool(capsys, "export", "--checkpoint", checkpoint, "--out", out, "--format", "torchscript")
    assert code == 2 and f"--out {out / 'model_exported.pt2'} already exists" in err  # ours: never kept silently
    code, _, err = run_tool(capsys, "export", "--checkpoint", checkpoint, "--out", out, "--format", "torchscript",
                            "--overwrite")
    assert code == 0, err
    info = json.loads((out / "model_info.json").read_text())
    assert info["formats"] == ["torchscript"]
    assert sorted(p.name for p in out.iterdir()) == sorted([*info["files"], "model_info.json"])
    assert sorted(info["files"]) == ["base_state_dict.pth", "model_torchscript.pt"]


def test_export_refuses_an_out_that_is_a_file_before_loading(trained, tmp_path, capsys):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("x")
    code, _, err = run_tool(capsys, "export", "--checkpoint", tmp_path / "absent.pth", "--out", blocker)
    assert code == 2 and err == f"error: --out {blocker}: is a file, not a folder\n"
    code, _, err = run_tool(capsys, "export", "--checkpoint", tmp_path / "absent.pth", "--out", blocker / "sub")
    assert code == 2 and err == f"error: --out {blocker / 'sub'}: {blocker} is not a folder\n"


# -------------------------------------------------------------------- inspect

def inspect_json(capsys, path):
    code, out, err = run_tool(capsys, "inspect", path, "--json")
    assert code == 0, err
    return json.loads(out)


def test_inspect_ours_authors_and_bare(trained, tmp_path, capsys, monkeypatch):
    model, checkpoint = trained["qcs"]
    all_parameters = sum(p.numel() for p in model.parameters())
    info = inspect_json(capsys, checkpoint)
    assert (info["format"], info["arch"], info["num_classes"], info["size"]) == ("ours", "qcs", 7, "tiny")
    assert info["classes"] == DEMO_CLASSES and info["dataset"] == "demo"
    assert (info["epoch"], info["best_acc"], info["best_epoch"]) == (3, 55.0, 2)
    assert info["num_tensors"] == len(model.state_dict()) and info["num_parameters"] == all_parameters

    authors = tmp_path / "authors.pth"
    authors_checkpoint(authors, model, monkeypatch)
    info = inspect_json(capsys, authors)
    assert (info["format"], info["naming"], info["arch"], info["num_classes"]) == ("authors", "authors", "qcs", 7)
    assert info["epoch"] == 7 and info["best_acc"] == pytest.approx(91.5)
    assert info["foreign_objects"] == ["__main__.RecorderMeter_loss"]
    assert info["unused_tensors"] == 3 and info["num_tensors"] == len(model.state_dict()) + 3
    assert info["num_parameters"] == all_parameters + 16 + 5 + 9
    code, text, _ = run_tool(capsys, "inspect", authors)
    assert code == 0 and "__main__.RecorderMeter_loss" in text and "91.50%" in text

    bare = tmp_path / "bare.pth"
    torch.save(model.base.state_dict(), bare)
    info = inspect_json(capsys, bare)
    assert (info["format"], info["arch"], info["num_classes"], info["size"]) == ("state_dict", "base", 7, "tiny")
    assert info["epoch"] is None and info["classes"] is None
    assert info["num_parameters"] == sum(p.numel() for p in model.base.parameters())

    ir50 = tmp_path / "ir50.pth"
    torch.save({k[len("base.backbone."):]: v for k, v in model.state_dict().items()
                if k.startswith("base.backbone.")}, ir50)
    info = inspect_json(capsys, ir50)
    assert info["format"] == "ir50" and info["arch"] is None and info["num_classes"] is None


@pytest.mark.slow  # the entry point in a subprocess
def test_module_entry_point_reports_bad_files(tmp_path):
    not_a_checkpoint = tmp_path / "notes.pth"
    not_a_checkpoint.write_text("hello")
    result = subprocess.run([sys.executable, "-m", "utils.tools", "inspect", str(not_a_checkpoint)],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert str(not_a_checkpoint) in result.stderr and "Traceback" not in result.stderr


# -------------------------------------------------------------------- test-time options

def test_predict_flip_tta_is_the_mean_of_the_face_and_its_mirror(trained, demo_root, tmp_path, capsys):
    model, checkpoint = trained["qcs"]
    images = sorted((demo_root / "images" / "test").glob("*.png"))[:3]
    out_json = tmp_path / "p.json"
    code, out, _ = run_tool(capsys, "predict", "--checkpoint", checkpoint, "--no-detect", "--tta", "flip",
                            "--top-k", 7, "--json", out_json, *images)
    assert code == 0 and "flip TTA" in out
    batch = torch.stack([preprocess(Image.open(p)) for p in images])
    with torch.no_grad():
        expected = torch.softmax((model.base(batch) + model.base(batch.flip(3))) / 2, dim=1)
        plain = torch.softmax(model.base(batch), dim=1)
    for row, probabilities, single in zip(json.loads(out_json.read_text())["predictions"], expected, plain):
        got = torch.tensor([row["probabilities"][name] for name in DEMO_CLASSES])
        assert torch.allclose(got, probabilities, atol=1e-5) and not torch.allclose(got, single, atol=1e-4)


def test_predict_fast_path_agrees_with_float32(trained, demo_root, tmp_path, capsys):
    model, checkpoint = trained["dcs"]
    images = sorted((demo_root / "images" / "test").glob("*.png"))[:8]
    out_json = tmp_path / "p.json"
    code, out, _ = run_tool(capsys, "predict", "--checkpoint", checkpoint, "--no-detect", "--amp",
                            "--channels-last", "--top-k", 7, "--json", out_json, *images)
    assert code == 0 and "--amp, --channels-last" in out
    expected = probabilities_of(model, [Image.open(p) for p in images]).detach()
    for row, probabilities in zip(json.loads(out_json.read_text())["predictions"], expected):
        got = torch.tensor([row["probabilities"][name] for name in DEMO_CLASSES])
        assert torch.allclose(got, probabilities, atol=2e-2)  # bf16 keeps 8 bits of mantissa
        assert row["top_k"][0]["class"] == DEMO_CLASSES[int(probabilities.argmax())]


def test_heatmaps_with_amp_draw_the_same_group(trained, demo_root, tmp_path, capsys):
    _, checkpoint = trained["qcs"]
    figures = {}
    for name, extra in (("fp32", []), ("amp", ["--amp"])):
        figures[name] = tmp_path / f"{name}.png"
        code, out, err = run_tool(capsys, "heatmaps", "--checkpoint", checkpoint, "--dataset", "demo",
                                  "--data-root", demo_root, *extra, "--out", figures[name])
        assert code == 0, err
        figures[name + " group"] = [line for line in out.splitlines() if line.startswith("group: ")]
    assert figures["amp group"] == figures["fp32 group"] and len(figures["amp group"]) == 1
    assert Image.open(figures["amp"]).size == Image.open(figures["fp32"]).size


def test_predict_onnx_refuses_the_pytorch_speed_options(demo_root, tmp_path, capsys):
    image = sorted((demo_root / "images" / "test").glob("*.png"))[0]
    code, _, err = run_tool(capsys, "predict", "--onnx", tmp_path / "model.onnx", "--amp", "--no-detect", image)
    assert code == 2 and "--amp does not apply to --onnx" in err and "float32" in err
