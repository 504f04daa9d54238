"""Faces in photos and videos: real FER2013 faces pasted on a large canvas, found by the real detector.

`predict` and `heatmaps` take photos through utils/tools/faces.py (EXIF orientation, dlib's HOG
detector, 5-point alignment); videos go through utils/tools/video.py (PyAV). Boxes are checked
against the pasted positions, the aligned crops against the documented template (landmarks found
again on the crop), and the no-extra path by making `import dlib` fail.
"""
import csv
import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from models import build_model
from utils.tools import cli as tools
from utils.tools import faces

CLASSES = ["Surprise", "Fear", "Disgust", "Happiness", "Sadness", "Anger", "Neutral"]
IMAGE_SIZE = 64
CANVAS = (1600, 1200)
# FER2013 test faces the HOG detector finds at every size from 160 to 250 px and rolled by ±12°
# (scores 1.0-3.2; checked once over the 655 test faces, these four score highest at 48→192 px).
# name → (x, y, side) of the pasted square on the canvas.
LAYOUT = {
    "surprise/PrivateTest_10712253.jpg": (150, 200, 250),
    "happy/PrivateTest_87342811.jpg": (700, 150, 200),
    "angry/PrivateTest_68625027.jpg": (1200, 600, 160),
    "neutral/PrivateTest_60797107.jpg": (400, 750, 220),
}
PASTED = sorted(LAYOUT.values())  # left to right, the order faces are numbered in
EXIF_ORIENTATION = 0x0112


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """An untrained tiny QCS in this project's checkpoint format (the labels are not what is tested)."""
    torch.manual_seed(0)
    model = build_model("qcs", len(CLASSES), size="tiny").eval()
    path = tmp_path_factory.mktemp("checkpoint") / "qcs.pth"
    torch.save({"format": "qcs-fer-checkpoint", "config": model.config, "model": model.state_dict(),
                "classes": CLASSES, "epoch": 1, "best_acc": 0.0, "best_epoch": 1,
                "run_config": {"dataset": "demo", "image_size": IMAGE_SIZE, "size": "tiny",
                               "augmentation": {"kind": "A"}}}, path)
    return path


def composite(shared_dir, angle=0, layout=LAYOUT, size=CANVAS):
    """A gray textured canvas with the FER2013 faces upscaled and pasted (rolled by `angle` degrees)."""
    rng = np.random.default_rng(0)
    canvas = Image.fromarray(rng.integers(96, 160, size[::-1], dtype=np.uint8)).convert("RGB")
    for name, (x, y, side) in layout.items():
        face = Image.open(shared_dir / "data" / "fer2013-mini" / "test" / name).convert("RGB")
        face = face.resize((side, side), Image.BICUBIC)
        if angle:
            face = face.rotate(angle, resample=Image.BICUBIC, fillcolor=(128, 128, 128))
        canvas.paste(face, (x, y))
    return canvas


def run_tool(capsys, *argv):
    code = tools.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def box_of(record):
    return tuple(int(record[k]) for k in ("box_x", "box_y", "box_w", "box_h"))


def overlap(box, square):
    """`(IoU, fraction of the box inside the square)` of two (x, y, w, h) boxes."""
    (ax, ay, aw, ah), (bx, by, side) = box, square
    w = max(0, min(ax + aw, bx + side) - max(ax, bx))
    h = max(0, min(ay + ah, by + side) - max(ay, by))
    return w * h / (aw * ah + side * side - w * h), w * h / (aw * ah)


def assert_on_pasted_faces(boxes, pasted=PASTED):
    """One box per pasted face, left to right, each inside its square and overlapping it.

    The detector boxes the face inside the FER2013 crop (forehead to chin), so the IoU with the
    pasted square is 0.36–0.72 here, never near 1.
    """
    assert len(boxes) == len(pasted)
    for box, square in zip(boxes, pasted):
        iou, inside = overlap(box, square)
        assert iou > 0.3 and inside > 0.9, (box, square, iou, inside)


# -------------------------------------------------------------------- detection, rows, options

def test_faces_found_where_pasted_one_row_per_face(face_extra, shared_dir, checkpoint, tmp_path, capsys):
    photo, empty = tmp_path / "group.png", tmp_path / "empty.png"
    composite(shared_dir).save(photo)
    composite(shared_dir, layout={}).save(empty)
    out_csv, out_json = tmp_path / "faces.csv", tmp_path / "faces.json"
    code, out, err = run_tool(capsys, "predict", "--checkpoint", checkpoint, "--csv", out_csv,
                              "--json", out_json, photo, empty)
    assert code == 0
    records = read_csv(out_csv)
    found = [r for r in records if r["image"] == str(photo)]
    assert [r["face"] for r in found] == ["1", "2", "3", "4"]
    assert_on_pasted_faces([box_of(r) for r in found])
    for record in found:
        x, y, w, h = box_of(record)
        assert float(record["score"]) > 0
        assert x <= float(record["left_eye_outer_x"]) < float(record["right_eye_outer_x"]) <= x + w
        assert y < float(record["right_eye_inner_y"]) < float(record["nose_y"]) < y + h
        assert record["class_1"] in CLASSES and not record["error"]
    assert f"{photo} [face 4 at x=" in out
    [missing] = [r for r in records if r["image"] == str(empty)]
    assert missing["error"] == "no face detected" and missing["face"] == ""
    assert f"{empty}: no face detected" in err
    assert "4 faces classified in 1 image, 1 image without a face" in out

    predictions = json.loads(out_json.read_text())["predictions"]
    assert [p["face"] for p in predictions] == [1, 2, 3, 4, None]
    assert [tuple(p["box"]) for p in predictions[:4]] == [box_of(r) for r in found]
    assert all(len(p["landmarks"]) == 5 and p["score"] > 0 for p in predictions[:4])
    assert sum(predictions[0]["probabilities"].values()) == pytest.approx(1, abs=1e-5)
    assert predictions[4]["error"] == "no face detected"


def test_largest_and_min_score_choose_faces(face_extra, shared_dir, checkpoint, tmp_path, capsys):
    photo = tmp_path / "group.png"
    composite(shared_dir).save(photo)
    code, _, _ = run_tool(capsys, "predict", "--checkpoint", checkpoint, "--csv", tmp_path / "all.csv", photo)
    every_face = read_csv(tmp_path / "all.csv")
    scores = sorted(float(r["score"]) for r in every_face)
    assert code == 0 and len(scores) == 4

    code, _, _ = run_tool(capsys, "predict", "--checkpoint", checkpoint, "--largest", "--csv",
                          tmp_path / "largest.csv", photo)
    [largest] = read_csv(tmp_path / "largest.csv")
    assert code == 0 and largest["face"] == "1"
    # the largest box, not the largest pasted square: the 250 px surprise crop frames its face smaller
    assert box_of(largest) == max((box_of(r) for r in every_face), key=lambda box: box[2] * box[3])

    threshold = (scores[1] + scores[2]) / 2  # keeps the two best-scoring faces
    code, _, _ = run_tool(capsys, "predict", "--checkpoint", checkpoint, "--min-score", threshold, "--csv",
                          tmp_path / "sure.csv", photo)
    kept = read_csv(tmp_path / "sure.csv")
    assert code == 0
    assert sorted(float(r["score"]) for r in kept) == pytest.approx(scores[2:], abs=1e-3)

    code, _, err = run_tool(capsys, "predict", "--checkpoint", checkpoint, "--min-score", 10, photo)
    assert code == 1 and "no face detected" in err  # nothing classified


def test_exif_orientation_gives_the_same_faces(face_extra, shared_dir, checkpoint, tmp_path, capsys):
    upright = composite(shared_dir)
    upright.save(tmp_path / "upright.jpg", quality=95)
    # Orientation 6: the stored pixels are turned 90° counterclockwise, a viewer turns them back.
    stored = {6: upright.transpose(Image.Transpose.ROTATE_90), 8: upright.transpose(Image.Transpose.ROTATE_270)}
    for orientation, pixels in stored.items():
        exif = Image.Exif()
        exif[EXIF_ORIENTATION] = orientation
        pixels.save(tmp_path / f"exif{orientation}.jpg", quality=95, exif=exif)
    out_json = tmp_path / "faces.json"
    code, _, _ = run_tool(capsys, "predict", "--checkpoint", checkpoint, "--json", out_json,
                          *(tmp_path / f"{name}.jpg" for name in ("upright", "exif6", "exif8")))
    assert code == 0
    predictions = json.loads(out_json.read_text())["predictions"]
    boxes = {name: [p["box"] for p in predictions if p["image"].endswith(f"{name}.jpg")]
             for name in ("upright", "exif6", "exif8")}
    assert_on_pasted_faces(boxes["upright"])
    for name in ("exif6", "exif8"):
        assert len(boxes[name]) == 4
        np.testing.assert_allclose(boxes[name], boxes["upright"], atol=3)  # JPEG noise differs by orientation
    finder = faces.FaceFinder()
    assert finder.find(Image.open(tmp_path / "exif6.jpg").convert("RGB")) == []  # the stored pixels: no upright face


# -------------------------------------------------------------------- alignment

def similarity_lstsq(source, target):
    """`[[a, -b, tx], [b, a, ty]]` mapping source to target, solved as a linear least-squares problem."""
    rows, values = [], []
    for (x, y), (u, v) in zip(source, target):
        rows += [[x, -y, 1, 0], [y, x, 0, 1]]
        values += [u, v]
    a, b, tx, ty = np.linalg.lstsq(np.array(rows, float), np.array(values, float), rcond=None)[0]
    return np.array([[a, -b, tx], [b, a, ty]])


@pytest.mark.parametrize("angle", [0, 12])
def test_aligned_crop_puts_the_eyes_on_the_template(face_extra, shared_dir, angle):
    side = 224
    finder = faces.FaceFinder(side=side)
    found = finder.find(composite(shared_dir, angle=angle))
    assert len(found) == 4
    for face in found:
        assert face.crop.size == (side, side)
        # landmarks found again on the crop, by the detector and predictor run on the crop alone
        gray = np.asarray(face.crop.convert("L"))
        rects, _, _ = finder.detector.run(gray, 0, -0.5)
        assert len(rects) == 1
        again = np.array(finder.landmarks(gray, rects[0]))
        eyes = np.array([again[0:2].mean(0), again[2:4].mean(0)])
        documented = np.array([[0.685, 0.396], [0.315, 0.396]]) * side  # README / faces.py framing
        np.testing.assert_allclose(eyes, documented, atol=6)  # 2.7% of the side: a rolled face comes out level
        # and where the photo's landmarks map to, by a transform solved independently
        forward = similarity_lstsq(face.landmarks, faces.TEMPLATE * side)
        mapped = np.c_[np.array(face.landmarks), np.ones(5)] @ forward.T
        np.testing.assert_allclose(again, mapped, atol=4)


def test_similarity_fit_matches_least_squares():
    rng = np.random.default_rng(1)
    source = rng.uniform(0, 100, (5, 2))
    angle, scale, shift = 0.3, 1.7, np.array([12.0, -4.0])
    rotation = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    target = source @ rotation.T + shift + rng.normal(0, 0.5, (5, 2))
    a, b, tx, ty = faces.fit_similarity(source, target)
    np.testing.assert_allclose([[a, -b, tx], [b, a, ty]], similarity_lstsq(source, target), atol=1e-9)
    assert np.hypot(a, b) == pytest.approx(scale, abs=0.05) and np.arctan2(b, a) == pytest.approx(angle, abs=0.05)


# -------------------------------------------------------------------- annotation

@pytest.mark.slow  # several detector passes over large photos or frames
def test_annotate_draws_boxes_and_refuses_to_overwrite(face_extra, shared_dir, checkpoint, tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    composite(shared_dir).save(photos / "group.png")
    composite(shared_dir, layout={}).save(photos / "empty.png")
    out_dir, out_csv = tmp_path / "annotated", tmp_path / "faces.csv"
    code, out, _ = run_tool(capsys, "predict", "--checkpoint", checkpoint, "--annotate", out_dir,
                            "--csv", out_csv, photos)
    assert code == 0 and "wrote 2 annotated images" in out
    original, drawn = Image.open(photos / "group.png"), Image.open(out_dir / "group.png")
    assert drawn.size == original.size
    for record in read_csv(out_csv):
        if record["error"]:
            continue
        x, y, w, h = box_of(record)
        colour = faces.PALETTE[CLASSES.index(record["class_1"])]
        assert drawn.getpixel((x + w // 2, y + h - 2)) == colour  # the box's bottom edge
        assert drawn.getpixel((x + 8, y + h // 2)) == original.getpixel((x + 8, y + h // 2))  # inside: untouched
    note = np.asarray(Image.open(out_dir / "empty.png"))[:10, :60]
    assert (note == 0).any() and (note == 255).any()  # "no face detected", white on black, top left

    code, _, err = run_tool(capsys, "predict", "--checkpoint", checkpoint, "--annotate", out_dir, photos)
    assert code == 2 and "refusing to overwrite" in err and "--annotate" in err


# -------------------------------------------------------------------- video

def write_video(path, frames, rate=25, rotation=0):
    """Encode RGB PIL frames as an MP4 with PyAV (`rotation`: the display matrix's counterclockwise angle)."""
    av = pytest.importorskip("av")
    codec = next(name for name in ("libx264", "mpeg4") if name in av.codecs_available)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height = frames[0].size
        stream.pix_fmt, stream.bit_rate = "yuv420p", 4_000_000
        if rotation:
            stream.set_display_rotation(rotation)
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_image(frame)))
        container.mux(stream.encode(None))


def moving_face(shared_dir, count=24, blank=(8, 9)):
    """Frames of a 180 px face moving right across a 640×360 canvas (none on the `blank` frames); its squares."""
    frames, squares = [], []
    for index in range(count):
        square = (10 + 18 * index, 90, 180)
        layout = {} if index in blank else {"happy/PrivateTest_87342811.jpg": square}
        frames.append(composite(shared_dir, layout=layout, size=(640, 360)))
        squares.append(None if index in blank else square)
    return frames, squares


def count_frames(path):
    import av
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


@pytest.mark.slow  # several detector passes over large photos or frames
def test_video_rows_per_frame_and_annotated_copy(face_extra, shared_dir, checkpoint, tmp_path, capsys):
    frames, squares = moving_face(shared_dir)
    clip = tmp_path / "clip.mp4"
    write_video(clip, frames)
    out_csv, out_dir = tmp_path / "frames.csv", tmp_path / "annotated"
    code, out, _ = run_tool(capsys, "predict", "--checkpoint", checkpoint, "--video", clip,
                            "--csv", out_csv, "--annotate", out_dir)
    assert code == 0
    records = read_csv(out_csv)
    assert [int(r["frame"]) for r in records] == list(range(24))
    assert [float(r["time"]) for r in records] == pytest.approx([i / 25 for i in range(24)], abs=1e-3)
    for record, square in zip(records, squares):
        if square is None:
            assert record["error"] == "no face detected" and record["face"] == ""
        else:
            assert record["face"] == "1" and record["label"] in CLASSES
            assert_on_pasted_faces([box_of(record)], [square])
            probabilities = [float(record[f"prob_{name}"]) for name in CLASSES]
            assert sum(probabilities) == pytest.approx(1, abs=1e-5)
            assert float(record["probability"]) == max(probabilities)
    assert "24 frames" in out and "22 faces classified, 2 frames without a face" in out
    assert count_frames(out_dir / "clip.mp4") == 24

    code, _, _ = run_tool(capsys, "predict", "--checkpoint", checkpoint, "--video", clip, "--every", 5,
                          "--csv", tmp_path / "every5.csv", "--annotate", tmp_path / "every5")
    assert code == 0
    assert [int(r["frame"]) for r in read_csv(tmp_path / "every5.csv")] == [0, 5, 10, 15, 20]
    assert count_frames(tmp_path / "every5" / "clip.mp4") == 24  # every frame, the results held between

    code, _, _ = run_tool(capsys, "predict", "--checkpoint", checkpoint, "--video", clip, "--every", 5,
                          "--detect-pixels", 76800, "--csv", tmp_path / "shrunk.csv")  # searched at 320×180
    assert code == 0
    records = read_csv(tmp_path / "shrunk.csv")
    assert [int(r["frame"]) for r in records] == [0, 5, 10, 15, 20]
    for record in records:
        assert_on_pasted_faces([box_of(record)], [squares[int(record["frame"])]])


def test_video_display_rotation_is_applied(face_extra, shared_dir, checkpoint, tmp_path, capsys):
    frames, squares = moving_face(shared_dir, count=6, blank=())
    # stored turned 90° clockwise, with a display matrix that turns it back counterclockwise
    write_video(tmp_path / "rotated.mp4", [frame.transpose(Image.Transpose.ROTATE_270) for frame in frames],
                rotation=90)
    code, _, _ = run_tool(capsys, "predict", "--checkpoint", checkpoint, "--video", tmp_path / "rotated.mp4",
                          "--csv", tmp_path / "rotated.csv")
    assert code == 0
    records = read_csv(tmp_path / "rotated.csv")
    assert len(records) == 6
    for record, square in zip(records, squares):
        assert_on_pasted_faces([box_of(record)], [square])


# -------------------------------------------------------------------- heatmaps on a photo

@pytest.mark.slow  # several detector passes over large photos or frames
def test_heatmaps_of_faces_in_a_photo(face_extra, shared_dir, checkpoint, tmp_path, capsys):
    photo, out = tmp_path / "group.png", tmp_path / "maps.png"
    composite(shared_dir).save(photo)
    code, stdout, _ = run_tool(capsys, "heatmaps", "--checkpoint", checkpoint, "--images", photo, "--out", out)
    assert code == 0
    width, height = Image.open(out).size
    assert width * 4 == height * 5  # 4 faces (QCS group) × face, 3 levels, fused
    assert "anchor: group.png face 1" in stdout and "negative2: group.png face 4" in stdout
    code, _, err = run_tool(capsys, "heatmaps", "--checkpoint", checkpoint, "--images", photo, "--largest",
                            "--out", tmp_path / "one.png")
    assert code == 2 and "group is 4 faces" in err and "gave 1" in err
    code, stdout, err = run_tool(capsys, "heatmaps", "--checkpoint", checkpoint, "--images", photo, photo,
                                 "--out", tmp_path / "eight.png")
    assert code == 0 and "negative2: group.png face 4" in stdout
    assert "gave 8 faces; the group is the first 4" in err


# -------------------------------------------------------------------- without the extra

@pytest.fixture
def no_extra(monkeypatch):
    """`import dlib` fails, as where requirements-faces.txt is not installed."""
    monkeypatch.setitem(sys.modules, "dlib", None)
    assert not faces.available()


def test_without_the_extra_a_large_photo_warns(no_extra, shared_dir, checkpoint, tmp_path, capsys):
    photo, crop = tmp_path / "group.png", shared_dir / "data" / "fer2013-mini" / "test" / "happy" / \
        "PrivateTest_87342811.jpg"
    composite(shared_dir).save(photo)
    code, out, err = run_tool(capsys, "predict", "--checkpoint", checkpoint, photo, crop)
    assert code == 0 and "2 images classified" in out
    [line] = err.strip().splitlines()  # the photo, not the 48×48 crop
    assert str(photo) in line and "1600×1200" in line and "pip install -r requirements-faces.txt" in line
    code, _, err = run_tool(capsys, "predict", "--checkpoint", checkpoint, "--no-detect", photo)
    assert code == 0 and err == ""  # asked not to detect: no advice


def test_without_the_extra_detect_is_a_one_line_error(no_extra, shared_dir, checkpoint, tmp_path, capsys):
    photo = tmp_path / "group.png"
    composite(shared_dir).save(photo)
    code, out, err = run_tool(capsys, "predict", "--checkpoint", checkpoint, "--detect", photo)
    assert code == 2 and out == ""
    [line] = err.strip().splitlines()
    assert line.startswith("error: --detect") and line.endswith("pip install -r requirements-faces.txt")
    code, _, err = run_tool(capsys, "predict", "--checkpoint", checkpoint, "--largest", photo)
    assert code == 2 and "--largest" in err and "requirements-faces.txt" in err


def test_without_pyav_video_is_a_one_line_error(checkpoint, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"")
    code, _, err = run_tool(capsys, "predict", "--checkpoint", checkpoint, "--video", clip)
    assert code == 2
    [line] = err.strip().splitlines()
    assert line.endswith("pip install -r requirements-video.txt")
