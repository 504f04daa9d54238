"""Edge cases of photos given to the tools: false faces, tiny, transparent, broken, huge, oddly
named and special files, Ctrl-C, and option bounds. Each runs the real command (python -m
utils.tools) on real files made here; detection tests use dlib and the FER2013 faces in ../shared."""
import ast
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFilter

from models import build_model
from utils.tools import classify, faces
from utils.tools import cli as tools

CLASSES = ["Surprise", "Fear", "Disgust", "Happiness", "Sadness", "Anger", "Neutral"]
ROOT = Path(__file__).resolve().parents[1]
FACE = "angry/PrivateTest_68625027.jpg"  # scores about 1.8 at 160 px (tests/test_faces.py)
FACE_AT = (1200, 600, 160)
EXIF_ORIENTATION = 0x0112

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """An untrained tiny QCS in this project's format, with its logits spread so inputs tell apart."""
    torch.manual_seed(0)
    model = build_model("qcs", len(CLASSES), size="tiny").eval()
    with torch.no_grad():
        model.base.vit.head.classifier.weight.mul_(300)
    path = tmp_path_factory.mktemp("checkpoint") / "qcs.pth"
    torch.save({"format": "qcs-fer-checkpoint", "config": model.config, "model": model.state_dict(),
                "classes": CLASSES, "epoch": 1, "best_acc": 0.0, "best_epoch": 1,
                "run_config": {"dataset": "demo", "image_size": 64, "size": "tiny",
                               "augmentation": {"kind": "A"}}}, path)
    return path


def run_tool(capsys, *argv):
    code = tools.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def small_png(path, side=48, mode="RGB"):
    rng = np.random.default_rng(len(str(path)))
    Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).convert(mode).save(path)
    return path


# -------------------------------------------------------------------- 1. a portrait and a face-like patch

def portrait(shared_dir):
    """A 1600×1200 canvas: one FER2013 face (160 px) and, larger, a skin-coloured oval with two dark
    spots that dlib scores just above 0 (0.03 here; 0.03-0.64 at other places on the canvas)."""
    rng = np.random.default_rng(0)
    canvas = Image.fromarray(rng.integers(96, 160, (1200, 1600), dtype=np.uint8)).convert("RGB")
    face = Image.open(shared_dir / "data" / "fer2013-mini" / "test" / FACE).convert("RGB")
    x, y, side = FACE_AT
    canvas.paste(face.resize((side, side), Image.BICUBIC), (x, y))
    patch = Image.new("RGB", (400, 400), (128, 128, 128))
    draw = ImageDraw.Draw(patch)
    radius, spot = 138, 138 // 3
    draw.ellipse((200 - radius, 200 - int(radius * 1.25), 200 + radius, 200 + int(radius * 1.25)),
                 fill=(210, 160, 130))
    for cx in (200 - radius // 2.5, 200 + radius // 2.5):
        draw.ellipse((cx - spot, 200 - radius // 3 - spot // 2, cx + spot, 200 - radius // 3 + spot // 2),
                     fill=(70, 53, 43))
    canvas.paste(patch.filter(ImageFilter.GaussianBlur(4)), (0, 0))
    return canvas


def test_a_portrait_gives_exactly_its_face_plain_and_exif_rotated(face_extra, shared_dir, checkpoint, tmp_path, capsys):
    picture = portrait(shared_dir)
    weak = [score for _, score, _ in faces.FaceFinder(min_score=-0.2).boxes(np.asarray(picture.convert("L")))]
    assert len(weak) == 2 and 0 < min(weak) < faces.DEFAULT_MIN_SCORE  # the patch: a near-zero detection
    picture.save(tmp_path / "plain.png")
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6  # stored turned 90° counterclockwise; a viewer turns it back
    picture.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "exif6.jpg", quality=95, exif=exif)
    out = tmp_path / "faces.csv"
    code, _, _ = run_tool(capsys, "predict", "--checkpoint", checkpoint, "--csv", out,
                          tmp_path / "plain.png", tmp_path / "exif6.jpg")
    assert code == 0
    rows = read_csv(out)
    assert [Path(row["image"]).name for row in rows] == ["plain.png", "exif6.jpg"]
    x, y, side = FACE_AT
    for row in rows:
        bx, by, bw, bh = (int(row[k]) for k in ("box_x", "box_y", "box_w", "box_h"))
        assert x <= bx + bw / 2 <= x + side and y <= by + bh / 2 <= y + side  # on the pasted face


def test_largest_never_prefers_a_near_zero_detection(face_extra, shared_dir, checkpoint, tmp_path, capsys):
    portrait(shared_dir).save(tmp_path / "plain.png")
    out = tmp_path / "largest.csv"
    # --min-score 0 admits the larger patch; --largest still takes the face
    code, _, _ = run_tool(capsys, "predict", "--checkpoint", checkpoint, "--min-score", 0, "--largest",
                          "--csv", out, tmp_path / "plain.png")
    [row] = read_csv(out)
    x, y, side = FACE_AT
    assert code == 0 and x <= int(row["box_x"]) < x + side and float(row["score"]) > 1


# -------------------------------------------------------------------- 2. 3. 4. tiny, transparent, broken

def test_a_tiny_image_says_it_is_too_small_for_the_detector(face_extra, checkpoint, tmp_path, capsys):
    tiny = small_png(tmp_path / "tiny.png", side=10)
    code, _, err = run_tool(capsys, "predict", "--checkpoint", checkpoint, tiny)
    assert code == 1
    assert (f"{tiny}: 10×10 px is too small for the face detector, which finds faces of 80 px and larger "
            "at --upsample 0; --upsample 1 finds 40 px") in err
    code, _, err = run_tool(capsys, "predict", "--checkpoint", checkpoint, "--upsample", 2, tiny)
    assert code == 1 and "faces of 20 px and larger at --upsample 2" in err


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_transparency_is_composited_onto_white(checkpoint, tmp_path, capsys, mode):
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)
    clear = np.zeros((48, 48), bool)
    clear[:, :24] = True  # the left half transparent: its stored colour must not count
    if mode == "P":
        image = Image.fromarray(pixels).quantize(64)
        indices = np.asarray(image).copy()
        indices[clear] = 63
        indices[~clear & (indices == 63)] = 62
        image = Image.fromarray(indices, "P")
        image.putpalette(Image.fromarray(pixels).quantize(64).getpalette())
        image.info["transparency"] = 63
        seen = np.asarray(image.convert("RGB")).copy()
    else:
        base = Image.fromarray(pixels).convert("RGB" if mode == "RGBA" else "L")
        image = base.copy()
        image.putalpha(Image.fromarray(np.where(clear, 0, 255).astype(np.uint8)))
        seen = np.asarray(base.convert("RGB")).copy()
    seen[clear] = 255  # what a viewer shows on white
    image.save(tmp_path / "clear.png")
    Image.fromarray(seen).save(tmp_path / "on_white.png")
    out = tmp_path / "p.json"
    code, _, _ = run_tool(capsys, "predict", "--checkpoint", checkpoint, "--no-detect", "--json", out,
                          tmp_path / "clear.png", tmp_path / "on_white.png")
    assert code == 0
    first, second = (p["probabilities"] for p in json.loads(out.read_text())["predictions"])
    assert first == pytest.approx(second, abs=1e-6)


def test_a_broken_image_names_its_file(checkpoint, tmp_path, capsys):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8not a jpeg at all" * 3)
    code, _, err = run_tool(capsys, "predict", "--checkpoint", checkpoint, "--no-detect", broken)
    assert code == 1 and "<_io" not in err and "BufferedReader" not in err
    assert f"{broken}: cannot read image: not in an image format PIL recognises (or damaged)" in err


# -------------------------------------------------------------------- 5. a huge image

def test_detection_on_a_shrunk_image_maps_boxes_back(face_extra, shared_dir, monkeypatch):
    picture = portrait(shared_dir).resize((3200, 2400), Image.BICUBIC)
    full = [face for face in faces.FaceFinder().find(picture) if face.score > 1]  # the FER2013 face
    monkeypatch.setattr(faces, "MAX_DETECTION_PIXELS", 3200 * 2400 // 4)  # searched at half the side
    finder = faces.FaceFinder()
    assert finder.shrink_factor(picture.size) == 2
    shrunk = [face for face in finder.find(picture) if face.score > 1]
    assert len(full) == len(shrunk) == 1
    # the detector's boxes step with its pyramid: the same face, within a tenth of its side
    side = full[0].box[2]
    np.testing.assert_allclose(shrunk[0].box, full[0].box, atol=side / 10)
    np.testing.assert_allclose(shrunk[0].landmarks, full[0].landmarks, atol=side / 20)


def peak_of_predict(checkpoint, image):
    """`(exit status, stderr, peak resident memory in KB)` of `predict --upsample 1 IMAGE` in a fresh process."""
    code = ("import resource, sys; from utils.tools import cli; rc = cli.main(sys.argv[1:]); "
            "print('maxrss', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(rc)")
    done = subprocess.run([sys.executable, "-c", code, "predict", "--checkpoint", str(checkpoint), "--upsample", "1",
                           str(image)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    return done.returncode, done.stderr, int(done.stdout.split("maxrss")[1])


@pytest.mark.slow
def test_a_12000_px_png_is_searched_in_bounded_memory(face_extra, checkpoint, tmp_path):
    huge, small = tmp_path / "huge.png", tmp_path / "small.png"
    Image.new("L", (12000, 12000), 128).save(huge)  # a few hundred KB on disk, 144 megapixels
    Image.new("L", (100, 100), 128).save(small)
    code, err, peak_kb = peak_of_predict(checkpoint, huge)
    assert code == 1 and "Traceback" not in err, err
    assert f"{huge}: no face detected" in err
    _, _, baseline_kb = peak_of_predict(checkpoint, small)  # torch, dlib and the model: about 1 GB
    # Before: 2.4 GB more at --upsample 0, a MemoryError at 1. Now the image as RGB (430 MB) and as
    # decoded (144 MB), and dlib's search of it shrunk to 24 megapixels.
    assert peak_kb - baseline_kb < 1_000_000


# -------------------------------------------------------------------- 6. 7. names and Ctrl-C

def test_file_names_that_are_not_utf8_are_written_escaped(checkpoint, tmp_path, capsys):
    name = os.fsdecode(b"face\xff.png")
    small_png(tmp_path / name)
    out_csv, out_json = tmp_path / "p.csv", tmp_path / "p.json"
    code, out, _ = run_tool(capsys, "predict", "--checkpoint", checkpoint, "--no-detect", "--csv", out_csv,
                            "--json", out_json, tmp_path / name)
    assert code == 0
    [row] = read_csv(out_csv)
    assert row["image"] == f"{tmp_path}/face\\xff.png" and row["class_1"] in CLASSES
    assert json.loads(out_json.read_text())["predictions"][0]["image"] == f"{tmp_path}/face\\xff.png"
    assert "face\\xff.png:" in out


def test_ctrl_c_writes_the_rows_so_far_and_exits_130(checkpoint, tmp_path, capsys, monkeypatch):
    folder = tmp_path / "in"
    folder.mkdir()
    for index in range(4):
        small_png(folder / f"{index}.png")
    load, calls = classify.load_photo, []

    def interrupted_at_the_third(path):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt  # where Ctrl-C lands while a photo is read
        return load(path)

    monkeypatch.setattr(classify, "load_photo", interrupted_at_the_third)
    out_csv, out_json = tmp_path / "p.csv", tmp_path / "p.json"
    code, _, err = run_tool(capsys, "predict", "--checkpoint", checkpoint, "--no-detect", "--batch-size", 1,
                            "--csv", out_csv, "--json", out_json, folder)
    assert code == 130
    assert [Path(row["image"]).name for row in read_csv(out_csv)] == ["0.png", "1.png"]
    document = json.loads(out_json.read_text())
    assert document["partial"] == "interrupted after 2 of 4 files" and len(document["predictions"]) == 2
    assert err.strip().splitlines()[-1] == ("interrupted: interrupted after 2 of 4 files; "
                                            "wrote the 2 rows of those files (partial)")
    assert "Traceback" not in err


# -------------------------------------------------------------------- 8. 9. 10. options

def test_class_lists_that_do_not_fit_are_refused(checkpoint, tmp_path, capsys):
    image = small_png(tmp_path / "a.png")
    code, _, err = run_tool(capsys, "predict", "--checkpoint", checkpoint, "--no-detect", "--classes",
                            "a,b,c,d,e,f,a", image)
    assert code == 2 and err.strip() == ("error: --classes names 'a' twice; give each class of the head once, "
                                         "in label order")
    code, _, err = run_tool(capsys, "predict", "--checkpoint", checkpoint, "--no-detect", "--classes", "a,b,c", image)
    assert code == 2 and err.strip() == f"error: --classes gives 3 classes but {checkpoint} has a 7-class head"


@pytest.mark.parametrize("command", ["predict", "heatmaps", "export"])
def test_image_size_is_bounded(checkpoint, tmp_path, capsys, command):
    extra = {"predict": [tmp_path], "heatmaps": ["--dataset", "demo"], "export": ["--out", tmp_path / "out"]}[command]
    code, _, err = run_tool(capsys, command, "--checkpoint", checkpoint, "--image-size", 100000, *extra)
    assert code == 2 and err.strip() == "error: --image-size must be 16..1024 pixels, got 100000"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("seed", [-1, 2 ** 32])
def test_heatmaps_seed_is_bounded(checkpoint, tmp_path, capsys, seed):
    code, _, err = run_tool(capsys, "heatmaps", "--checkpoint", checkpoint, "--dataset", "demo", "--seed", seed,
                            "--out", tmp_path / "h.png")
    assert code == 2 and err.strip() == f"error: --seed must be 0..4294967295, got {seed}"


# -------------------------------------------------------------------- 11. special files

def test_named_pipes_are_skipped_without_opening_them(checkpoint, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    small_png(folder / "a.png")
    os.mkfifo(folder / "pipe.png")
    os.mkfifo(tmp_path / "given.jpg")
    out = tmp_path / "p.csv"
    code, _, err = run_tool(capsys, "predict", "--checkpoint", checkpoint, "--no-detect", "--csv", out,
                            folder, tmp_path / "given.jpg")
    assert code == 0
    assert f"{folder / 'pipe.png'}: not a regular file: a named pipe (FIFO)" in err
    assert f"{tmp_path / 'given.jpg'}: not a regular file: a named pipe (FIFO)" in err
    assert [row["error"] for row in read_csv(out)] == ["", "not a regular file: a named pipe (FIFO)",
                                                       "not a regular file: a named pipe (FIFO)"]


# -------------------------------------------------------------------- 12. 14. help and module structure

@pytest.mark.parametrize("command", ["predict", "heatmaps", "export"])
def test_help_shows_each_default_once(command, capsys):
    with pytest.raises(SystemExit):
        tools.main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: None)" not in text and "(default: False)" not in text
    options = text.split(" --")
    assert all(option.count("default") <= 1 for option in options), [o for o in options if o.count("default") > 1]


def imported_modules(path):
    """The modules of utils/tools a file imports, at the top or inside functions."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            names |= {node.module} if node.module else {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("utils.tools"):
            names.add(node.module.rsplit(".", 1)[-1])
    return names


def test_predict_and_video_do_not_import_each_other():
    tools_dir = ROOT / "utils" / "tools"
    assert "video" not in imported_modules(tools_dir / "predict.py")
    assert "predict" not in imported_modules(tools_dir / "video.py")
