"""The procedurally drawn demo dataset: layout, determinism, learnable classes, measured shortcut."""

import colorsys
import csv
import json

import numpy as np
import pytest
from PIL import Image

from data_preprocessing import DataError, build_dataset, demo

NUM_CLASSES = 7


@pytest.fixture
def default_demo(demo_dataset):
    """The session's default demo dataset (tests/conftest.py), generated once: (root, first call's info)."""
    return demo_dataset


def read_list(path):
    entries = []
    for line in path.read_text().splitlines():
        name, label = line.split(" ")
        entries.append((name, int(label)))
    return entries


def read_attributes(root, split):
    with open(root / "demo_attributes.csv", newline="") as handle:
        return [row for row in csv.DictReader(handle) if row["split"] == split]


def small(root, **overrides):
    params = dict(seed=3, train_per_class=2, test_per_class=1, image_size=48)
    params.update(overrides)
    return demo.ensure_demo_dataset(root, **params)


def test_classes_in_rafdb_order():
    assert demo.DEMO_CLASSES == ["Surprise", "Fear", "Disgust", "Happiness", "Sadness", "Anger", "Neutral"]


def test_default_layout(default_demo):
    root, info = default_demo
    assert info["generated"] and (info["num_train"], info["num_test"]) == (7 * 60, 7 * 20)
    for split, per_class in (("train", 60), ("test", 20)):
        entries = read_list(root / f"demo_{split}.txt")
        labels = np.array([label for _, label in entries])
        assert np.array_equal(np.bincount(labels, minlength=NUM_CLASSES), [per_class] * NUM_CLASSES)
        for name, _ in entries[:NUM_CLASSES]:
            assert name.startswith(f"{split}/") and name.endswith(".png")
            with Image.open(root / "images" / name) as image:
                assert image.size == (112, 112) and image.mode == "RGB"
        assert all((root / "images" / name).is_file() for name, _ in entries)
    meta = json.loads((root / "demo_meta.json").read_text())
    assert meta["seed"] == 0 and meta["spurious"] == "background" and meta["spurious_strength"] == 0.8
    assert meta["classes"] == demo.DEMO_CLASSES


def file_stamps(root):
    return {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file() and p.name != ".demo.lock"}


def test_same_parameters_is_a_no_op(default_demo, tmp_path, monkeypatch):
    root, _ = default_demo
    stamps = file_stamps(root)
    drawn, real_draw_face = [], demo.draw_face

    def counting_draw_face(*args, **kwargs):
        drawn.append(args)
        return real_draw_face(*args, **kwargs)

    monkeypatch.setattr(demo, "draw_face", counting_draw_face)
    info = demo.ensure_demo_dataset(root)
    assert not info["generated"] and drawn == []  # the folder is reused: not one face drawn again
    assert file_stamps(root) == stamps  # no file rewritten, added or removed
    small(tmp_path)  # the spy sees a real generation, so the empty list above means something
    assert len(drawn) == NUM_CLASSES * (2 + 1 + 1)  # train, test and test_flipped of `small`


@pytest.mark.parametrize("change, mentioned", [
    (dict(seed=1), "seed"),
    (dict(spurious_strength=0.5), "spurious_strength"),
    (dict(spurious="skin"), "spurious"),
    (dict(train_per_class=10), "train_per_class"),
])
def test_different_parameters_refused(default_demo, change, mentioned):
    root, _ = default_demo
    with pytest.raises(ValueError, match=f"different parameters: .*{mentioned}="):
        demo.ensure_demo_dataset(root, **change)


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    small(tmp_path / "a")
    small(tmp_path / "b")
    small(tmp_path / "c", seed=4)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) > 3 * NUM_CLASSES
    for relative in files:
        assert (tmp_path / "a" / relative).read_bytes() == (tmp_path / "b" / relative).read_bytes(), relative
    images = [r for r in files if r.suffix == ".png"]
    differing = [r for r in images if (tmp_path / "a" / r).read_bytes() != (tmp_path / "c" / r).read_bytes()]
    assert len(differing) == len(images)


def test_interrupted_generation_detected(tmp_path):
    small(tmp_path)
    (tmp_path / "demo_meta.json").unlink()
    with pytest.raises(ValueError, match="no demo_meta.json.*delete"):
        small(tmp_path)
    other = tmp_path / "other"
    (other / "images").mkdir(parents=True)
    with pytest.raises(ValueError, match="delete"):
        small(other)


def test_a_folder_holding_other_data_is_never_filled(tmp_path):
    root = tmp_path / "RAF-DB"
    (root / "basic").mkdir(parents=True)
    (root / "raf_db_basic_train.txt").write_text("train_00001_aligned.jpg 0\n")
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    with pytest.raises(ValueError, match=f"--data-root {root} is not a demo folder .*basic, raf_db_basic_train.txt"):
        small(root)
    with pytest.raises(DataError, match="is not a demo folder"):  # what `--dataset demo --data-root X` reads
        build_dataset("demo", "train", root)
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before  # not even a lock file


def test_cli_out_that_cannot_be_a_folder_is_one_line(tmp_path, capsys):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("x")
    assert demo.main(["--out", str(blocker / "demo"), "--train-per-class", "1"]) == 2
    assert capsys.readouterr().err == f"error: --out {blocker / 'demo'}: {blocker} is not a folder\n"


def test_bad_parameters_refused(tmp_path):
    with pytest.raises(ValueError, match="spurious must be one of"):
        small(tmp_path, spurious="hair")
    with pytest.raises(ValueError, match=r"spurious_strength must be in \[0, 1\]"):
        small(tmp_path, spurious_strength=1.5)
    with pytest.raises(ValueError, match="train_per_class"):
        small(tmp_path, train_per_class=0)
    assert not (tmp_path / "images").exists()


def test_spurious_background_measured(default_demo):
    root, _ = default_demo
    train, test = read_attributes(root, "train"), read_attributes(root, "test")
    assert len(train) == 420 and len(test) == 140
    agree_train = np.mean([int(r["background"]) == int(r["label"]) for r in train])
    agree_test = np.mean([int(r["background"]) == int(r["label"]) for r in test])
    assert abs(agree_train - 0.8) < 0.07  # binomial sd 0.02 for n=420
    assert abs(agree_test - 1 / 7) < 0.1  # binomial sd 0.03 for n=140
    other_train = np.mean([int(r["skin"]) == int(r["label"]) for r in train])  # not the tied attribute
    assert other_train < 0.3


def test_recorded_background_is_the_drawn_one(default_demo):
    """The hue of the left/right image borders (beside the face) matches the recorded background level."""
    root, _ = default_demo
    rows = read_attributes(root, "test")
    matches = 0
    for row in rows:
        pixels = np.asarray(Image.open(root / "images" / row["name"]), dtype=np.float64) / 255
        border = np.concatenate([pixels[40:72, :4].reshape(-1, 3), pixels[40:72, -4:].reshape(-1, 3)]).mean(0)
        hue = colorsys.rgb_to_hsv(*border)[0]
        level_hues = np.arange(NUM_CLASSES) / NUM_CLASSES
        circular = np.abs((hue - level_hues + 0.5) % 1 - 0.5)
        matches += int(circular.argmin() == int(row["background"]))
    assert matches / len(rows) > 0.95


@pytest.mark.parametrize("attribute, strength, expected", [("accessory", 1.0, 1.0), ("texture", 0.0, 0.0)])
def test_spurious_attribute_and_strength_configurable(tmp_path, attribute, strength, expected):
    small(tmp_path, train_per_class=6, spurious=attribute, spurious_strength=strength)
    train = read_attributes(tmp_path, "train")
    assert np.mean([int(r[attribute]) == int(r["label"]) for r in train]) == expected


def mouth_crop(root, row):
    """Grey mouth region, located from the recorded face ellipse, standardised per image."""
    cx, cy, rx, ry = (float(row[key]) for key in ("face_cx", "face_cy", "face_rx", "face_ry"))
    with Image.open(root / "images" / row["name"]) as image:
        crop = image.convert("L").crop((round(cx - 0.45 * rx), round(cy + 0.25 * ry),
                                        round(cx + 0.45 * rx), round(cy + 0.8 * ry)))
        values = np.asarray(crop.resize((24, 16), Image.BILINEAR), dtype=np.float64).ravel()
    return (values - values.mean()) / (values.std() + 1e-6)


def test_expressions_distinguishable_from_mouth_region(default_demo):
    root, _ = default_demo
    crops, labels = {}, {}
    for split in ("train", "test"):
        rows = read_attributes(root, split)
        crops[split] = np.array([mouth_crop(root, row) for row in rows])
        labels[split] = np.array([int(row["label"]) for row in rows])
    means = np.array([crops["train"][labels["train"] == c].mean(0) for c in range(NUM_CLASSES)])
    spread = np.mean([np.linalg.norm(crops["train"][labels["train"] == c] - means[c], axis=1).mean()
                      for c in range(NUM_CLASSES)])
    pair_distances = np.linalg.norm(means[:, None] - means[None], axis=-1)[~np.eye(NUM_CLASSES, dtype=bool)]
    # every pair of class means is far apart compared with the noise in a 60-image mean
    assert pair_distances.min() > 5 * spread / np.sqrt(60)
    nearest = np.linalg.norm(crops["test"][:, None] - means[None], axis=-1).argmin(1)
    assert np.mean(nearest == labels["test"]) > 0.85  # chance is 1/7


def test_draw_face_is_deterministic_and_label_checked():
    attrs = demo.sample_attributes(np.random.default_rng(0), label=2)
    first = demo.draw_face(np.random.default_rng(5), 2, attrs, 64)
    second = demo.draw_face(np.random.default_rng(5), 2, attrs, 64)
    assert first.size == (64, 64) and first.tobytes() == second.tobytes()
    with pytest.raises(ValueError, match="label"):
        demo.draw_face(np.random.default_rng(5), 7, attrs, 64)


def test_cli(tmp_path, capsys):
    args = ["--out", str(tmp_path), "--seed", "2", "--train-per-class", "1", "--test-per-class", "1",
            "--image-size", "40"]
    assert demo.main(args) == 0
    assert "7 train / 7 test" in capsys.readouterr().out
    assert read_list(tmp_path / "demo_test.txt")[3] == ("test/00003.png", 3)
    assert demo.main(args[:3] + ["3"] + args[4:]) == 2
    assert "different parameters" in capsys.readouterr().err


def test_flipped_test_split_sets_the_nuisance_against_the_label(default_demo):
    root, _ = default_demo
    test, flipped = read_attributes(root, "test"), read_attributes(root, "test_flipped")
    assert len(flipped) == len(test) == 140
    # every flipped image carries the background tied to the class three steps on, never its own
    assert all(int(r["background"]) == (int(r["label"]) + 3) % NUM_CLASSES for r in flipped)
    # the faces are the test faces: same label, geometry and other nuisances, only the background moved
    for a, b in zip(test, flipped):
        assert a["label"] == b["label"] and a["face_cx"] == b["face_cx"] and a["skin"] == b["skin"]
    assert read_list(root / "demo_test_flipped.txt") == [(r["name"], int(r["label"])) for r in flipped]
