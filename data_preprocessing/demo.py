"""Embedded demo dataset: procedurally drawn faces showing seven expressions.

No download is needed: every image is drawn with Pillow from a seeded random
generator, so the same parameters always give byte-identical files.

The expressions differ in mouth, brows and eyes. Nuisance attributes vary per
image: background hue and texture, skin tone, accessory, lighting gradient,
face size/position and pixel noise. In the train split one nuisance attribute
(``spurious``, default the background hue) takes its label-tied value with
probability ``spurious_strength``; in the test split it is independent of the
label. A model that leans on that shortcut loses accuracy on the test split,
which makes the effect of unlabeled redundant features measurable.

Layout written under ``data_root``::

    images/train/00000.png ...      images/test/00000.png ...
    demo_train.txt, demo_test.txt   lines "<name relative to images/> <label>"
    demo_attributes.csv             per-image nuisance attributes and face box
    demo_meta.json                  generation parameters (written last)

Command line: ``python -m data_preprocessing.demo --out DIR [--seed N] ...``
"""

import argparse
import contextlib
import csv
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np

from data_preprocessing.demo_faces import (  # noqa: F401  (LEVELS_PER_ATTRIBUTE: part of the demo's interface)
    ACCESSORY_NAMES,
    BACKGROUND_HUES,
    CATEGORICAL_ATTRIBUTES,
    DEMO_CLASSES,
    LEVELS_PER_ATTRIBUTE,
    LIGHTING_DIRECTIONS,
    SKIN_TONES,
    TEXTURE_NAMES,
    DemoDataError,
    draw_face,
    face_geometry,
    sample_attributes,
)
from data_preprocessing.files import non_regular_kind
from data_preprocessing.layouts import DEMO_LAYOUT, DEMO_META_NAME
from data_preprocessing.outputs import (
    OutputError,
    atomic_write,
    atomic_write_text,
    check_output_dir,
    make_output_dir,
    output_errors,
    remove_stale_temporaries,
    temporary_pattern,
)

# Bump when the drawing changes, so old folders are refused instead of mixed.
DEMO_FORMAT_VERSION = 3

SPURIOUS_CHOICES = CATEGORICAL_ATTRIBUTES + ("none",)

ATTRIBUTE_COLUMNS = (
    "split", "name", "label", *CATEGORICAL_ATTRIBUTES,
    "face_cx", "face_cy", "face_rx", "face_ry", "light_strength", "noise_sigma",
)

ATTRIBUTES_NAME = "demo_attributes.csv"
# what the demo writes before the metadata
DATA_NAMES = (DEMO_LAYOUT.image_dir, *DEMO_LAYOUT.list_files.values(), ATTRIBUTES_NAME)
PARTIAL_DIR = ".demo_partial"
LOCK_NAME = ".demo.lock"
# test_flipped redraws the test faces (same seeds) with the spurious attribute set against the label
SPLIT_CODES = {"train": 0, "test": 1, "test_flipped": 1}


# ----------------------------------------------------------------------------
# dataset folder


def demo_parameters(seed: int = 0, train_per_class: int = 60, test_per_class: int = 20,
                    image_size: int = 112, spurious: str = "background",
                    spurious_strength: float = 0.8) -> dict:
    """Validated generation parameters, as recorded in demo_meta.json."""
    def whole(name, value, minimum):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
            raise DemoDataError(f"demo parameter {name} must be an integer >= {minimum}, got {value!r}")
        return int(value)

    if spurious not in SPURIOUS_CHOICES:
        raise DemoDataError(f"demo parameter spurious must be one of {', '.join(SPURIOUS_CHOICES)}, "
                            f"got {spurious!r}")
    try:
        strength = float(spurious_strength)
    except (TypeError, ValueError):
        strength = float("nan")
    if not 0.0 <= strength <= 1.0:
        raise DemoDataError(f"demo parameter spurious_strength must be in [0, 1], got {spurious_strength!r}")
    return {
        "version": DEMO_FORMAT_VERSION,
        "seed": whole("seed", seed, 0),
        "train_per_class": whole("train_per_class", train_per_class, 1),
        "test_per_class": whole("test_per_class", test_per_class, 1),
        "image_size": whole("image_size", image_size, 32),
        "spurious": spurious,
        "spurious_strength": strength,
    }


@contextlib.contextmanager
def _exclusive_lock(path: Path):
    """Serialise generation between processes (e.g. several training ranks); closing the file
    releases the lock."""
    with open(path, "a+") as handle:
        with contextlib.suppress(ImportError):  # not POSIX: no inter-process lock
            import fcntl
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _generate_split(split: str, params: dict, folder: Path) -> list[dict]:
    """Draw and save one split under ``folder/images/<split>``; return its attribute rows."""
    per_class = params["train_per_class" if split == "train" else "test_per_class"]
    image_size = params["image_size"]
    (folder / DEMO_LAYOUT.image_dir / split).mkdir(parents=True)
    rows = []
    for index in range(per_class * len(DEMO_CLASSES)):
        label = index % len(DEMO_CLASSES)
        rng = np.random.default_rng([params["seed"], SPLIT_CODES[split], index])
        attrs = sample_attributes(rng, label, params["spurious"], params["spurious_strength"],
                                  tie_to_label=(split == "train"), against_label=(split == "test_flipped"))
        name = f"{split}/{index:05d}.png"
        draw_face(rng, label, attrs, image_size).save(folder / DEMO_LAYOUT.image_dir / name, compress_level=1)
        cx, cy, rx, ry = face_geometry(attrs, image_size)
        rows.append({"split": split, "name": name, "label": label,
                     **{key: attrs[key] for key in CATEGORICAL_ATTRIBUTES},
                     "face_cx": f"{cx:.3f}", "face_cy": f"{cy:.3f}", "face_rx": f"{rx:.3f}",
                     "face_ry": f"{ry:.3f}", "light_strength": f"{attrs['light_strength']:.4f}",
                     "noise_sigma": f"{attrs['noise_sigma']:.4f}"})
    return rows


def _generate(root: Path, params: dict, flag: str) -> None:
    """Draw everything into a partial folder, move it into place, then write the metadata; a
    failed write (disk full, ...) is one OutputError line and removes the partial folder."""
    partial = root / PARTIAL_DIR
    if partial.exists():  # left by an interrupted generation; only this module writes it
        shutil.rmtree(partial)
    remove_stale_temporaries(root, DEMO_META_NAME)
    try:
        with output_errors(root, flag, "generating the demo data"):
            partial.mkdir()
            rows = []
            for split, list_name in DEMO_LAYOUT.list_files.items():
                split_rows = _generate_split(split, params, partial)
                atomic_write_text("".join(f"{r['name']} {r['label']}\n" for r in split_rows), partial / list_name)
                rows += split_rows
            atomic_write(partial / ATTRIBUTES_NAME, lambda handle: _write_attribute_rows(handle, rows), mode="w")
            for name in DATA_NAMES:
                os.replace(partial / name, root / name)
            meta = {**params, "classes": DEMO_CLASSES, "levels": {
                "background_hue": list(BACKGROUND_HUES), "texture": list(TEXTURE_NAMES),
                "skin": [list(tone) for tone in SKIN_TONES], "accessory": list(ACCESSORY_NAMES),
                "lighting": [list(d) for d in LIGHTING_DIRECTIONS]}}
            atomic_write_text(json.dumps(meta, indent=2) + "\n", root / DEMO_META_NAME)
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def _write_attribute_rows(handle, rows) -> None:
    writer = csv.DictWriter(handle, fieldnames=ATTRIBUTE_COLUMNS)
    writer.writeheader()
    writer.writerows(rows)


def _check_existing(root: Path, params: dict) -> None:
    meta_path = root / DEMO_META_NAME
    kind = non_regular_kind(meta_path)
    if kind is not None:  # reading a named pipe would wait for ever
        raise DemoDataError(f"{meta_path} is {kind}, not a regular file; delete the folder {root} "
                            f"to regenerate it")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        recorded = {key: meta[key] for key in params}
    except (ValueError, KeyError, TypeError) as error:  # ValueError: bad JSON or not UTF-8
        raise DemoDataError(f"{meta_path}: unreadable demo metadata ({error}); "
                            f"delete the folder {root} to regenerate it") from None
    differing = [f"{key}={recorded[key]!r} (requested {params[key]!r})"
                 for key in params if recorded[key] != params[key]]
    if differing:
        raise DemoDataError(f"{root} holds a demo dataset generated with different parameters: "
                            f"{', '.join(differing)}; use another data_root or delete this folder")
    missing = [name for name in DATA_NAMES if not (root / name).exists()]
    if missing:
        raise DemoDataError(f"{root}: demo dataset is incomplete (missing {', '.join(missing)}); "
                            f"delete the folder to regenerate it")


def _refuse_foreign_folder(root: Path, flag: str) -> None:
    """A folder without demo metadata that holds anything the demo does not write is someone's data:
    never generate into it."""
    ours = {*DATA_NAMES, DEMO_META_NAME, PARTIAL_DIR, LOCK_NAME}
    temporary = temporary_pattern()  # the metadata's, or another rank's writability probe
    foreign = sorted(p.name for p in root.iterdir() if p.name not in ours and not temporary.fullmatch(p.name))
    if foreign:
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise DemoDataError(f"{flag} {root} is not a demo folder (no {DEMO_META_NAME}) and holds other files "
                            f"({shown}); give an empty or new folder for the demo data")


def _describe(root: Path, params: dict, generated: bool) -> dict:
    return {
        "data_root": str(root),
        "images_dir": str(root / DEMO_LAYOUT.image_dir),
        "train_list": str(root / DEMO_LAYOUT.list_files["train"]),
        "test_list": str(root / DEMO_LAYOUT.list_files["test"]),
        "attributes_csv": str(root / ATTRIBUTES_NAME),
        "meta_path": str(root / DEMO_META_NAME),
        "classes": list(DEMO_CLASSES),
        "num_train": params["train_per_class"] * len(DEMO_CLASSES),
        "num_test": params["test_per_class"] * len(DEMO_CLASSES),
        "params": dict(params),
        "generated": generated,
    }


def ensure_demo_dataset(data_root, seed: int = 0, train_per_class: int = 60, test_per_class: int = 20,
                        image_size: int = 112, spurious: str = "background",
                        spurious_strength: float = 0.8, flag: str = "--data-root") -> dict:
    """Generate the demo dataset into ``data_root`` unless it is already there.

    Same parameters on an existing folder: no-op (nothing is written). Different
    parameters, a folder left incomplete by an interrupted run, or a folder holding
    other data raise DemoDataError (a ValueError); a folder that cannot be written
    raises OutputError, before anything is drawn. ``flag`` is the option that named
    ``data_root``, for the messages. Returns paths, classes, sizes, the parameters
    and whether anything was generated.
    """
    params = demo_parameters(seed, train_per_class, test_per_class, image_size, spurious, spurious_strength)
    root = Path(data_root)
    if root.exists() and not root.is_dir():
        raise DemoDataError(f"demo data_root {root} exists and is not a folder")
    if not (root / DEMO_META_NAME).exists():  # the metadata is written last: with it, the folder is complete
        if root.is_dir():
            _refuse_foreign_folder(root, flag)
        make_output_dir(check_output_dir(root, flag, create=True), flag)
        with _exclusive_lock(root / LOCK_NAME):
            if not (root / DEMO_META_NAME).exists():  # else another process generated it meanwhile
                leftovers = [name for name in DATA_NAMES if (root / name).exists()]
                if leftovers:
                    raise DemoDataError(f"{root} has {', '.join(leftovers)} but no {DEMO_META_NAME}: an earlier demo "
                                        f"generation was interrupted or the folder holds other data; delete it "
                                        f"(or choose another data_root) and retry")
                _generate(root, params, flag)
                return _describe(root, params, generated=True)
    _check_existing(root, params)  # read-only use
    return _describe(root, params, generated=False)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_preprocessing.demo",
                                     description="Generate the procedurally drawn demo face-expression dataset.")
    parser.add_argument("--out", required=True, help="folder to write (data_root)")
    for option, default in (("--seed", 0), ("--train-per-class", 60), ("--test-per-class", 20), ("--image-size", 112)):
        parser.add_argument(option, type=int, default=default)
    parser.add_argument("--spurious", default="background", choices=SPURIOUS_CHOICES,
                        help="nuisance attribute tied to the label in the train split")
    parser.add_argument("--spurious-strength", type=float, default=0.8,
                        help="probability that the train attribute takes its label-tied value")
    args = parser.parse_args(argv)
    try:
        info = ensure_demo_dataset(args.out, args.seed, args.train_per_class, args.test_per_class,
                                   args.image_size, args.spurious, args.spurious_strength, flag="--out")
    except (DemoDataError, OutputError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    state = "generated" if info["generated"] else "already present (same parameters)"
    print(f"demo dataset {state} in {info['data_root']}: {info['num_train']} train / "
          f"{info['num_test']} test images, classes {', '.join(info['classes'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
