"""Write AffectNet-7 / AffectNet-8 list files from AffectNet's ``training.csv`` and ``validation.csv``.

CSV columns: subDirectory_filePath, face_x, face_y, face_width, face_height,
facial_landmarks, expression, valence, arousal (the header row may be absent).
Expression codes 0 Neutral, 1 Happy, 2 Sad, 3 Surprise, 4 Fear, 5 Disgust,
6 Anger, 7 Contempt; 8..10 (None, Uncertain, Non-Face) are not expressions.
AffectNet-7 keeps codes 0..6 and AffectNet-8 codes 0..7, with the codes as labels.

With ``--crop`` every kept face is cut to its box (clamped to the image) and
saved as ``OUT/Manually_trainval_croped/<subDirectory_filePath>``. Without it
the list names are the original relative paths; the loader reads images from
``OUT/Manually_trainval_croped/``, so place (or link) the image folder there.

    python -m data_preprocessing.prepare_affectnet --train-csv training.csv \\
        --val-csv validation.csv --images Manually_Annotated_Images --out datas/AffectNet \\
        [--crop] [--workers 4] [--overwrite]
"""

from __future__ import annotations

import argparse
from multiprocessing import Pool
from pathlib import Path, PurePosixPath

from PIL import Image

from data_preprocessing._prepare_common import (
    PrepareError, parse_int, read_csv_rows, refuse_existing_outputs,
    refuse_output_over_inputs, require_dir, require_file, run_main, write_split_list,
)

from data_preprocessing.datasets import AFFECTNET8_CLASSES
AFFECTNET_HEADER = ["subDirectory_filePath", "face_x", "face_y", "face_width", "face_height",
                    "facial_landmarks", "expression", "valence", "arousal"]
MAX_EXPRESSION_CODE = 10
OUTPUT_NAMES = {
    ("train", 7): "affectnet_training-cls7-v7.txt",
    ("val", 7): "affectnet_validation-cls7.txt",
    ("train", 8): "affectnet_training-cls8-v7.txt",
    ("val", 8): "affectnet_validation-cls8.txt",
}
CROP_DIR = "Manually_trainval_croped"
MAX_MISSING_SHOWN = 5


def read_annotations(path: Path, flag: str) -> list[dict]:
    """Rows with an expression of 0..7, as dicts (csv, line, name, box, label)."""
    kept = []
    for line_number, row in read_csv_rows(path, AFFECTNET_HEADER, flag, header_optional=True):
        name = row[0].strip()
        relative = PurePosixPath(name.replace("\\", "/"))
        if not name or relative.is_absolute() or ".." in relative.parts or any(c.isspace() for c in name):
            raise PrepareError(f"{path} line {line_number}: subDirectory_filePath {name!r} must be a relative "
                               f"path without spaces")
        expression = parse_int(row[6], path, line_number, "expression")
        if not 0 <= expression <= MAX_EXPRESSION_CODE:
            raise PrepareError(f"{path} line {line_number}: expression {row[6]!r} is outside 0..{MAX_EXPRESSION_CODE}")
        box = [parse_int(row[col], path, line_number, AFFECTNET_HEADER[col]) for col in range(1, 5)]
        if box[2] <= 0 or box[3] <= 0:
            raise PrepareError(f"{path} line {line_number}: face_width and face_height must be > 0, got {box[2:]}")
        if expression < len(AFFECTNET8_CLASSES):
            kept.append({"csv": str(path), "line": line_number, "name": relative.as_posix(),
                         "box": tuple(box), "label": expression})
    return kept


def check_images_exist(images_dir: Path, rows) -> None:
    missing = [row for row in rows if not (images_dir / row["name"]).is_file()]
    if missing:
        shown = ", ".join(f"{row['name']} ({Path(row['csv']).name} line {row['line']})"
                          for row in missing[:MAX_MISSING_SHOWN])
        more = " ..." if len(missing) > MAX_MISSING_SHOWN else ""
        raise PrepareError(f"--images {images_dir}: {len(missing)} listed image(s) missing: {shown}{more}")


def clamped_box(box, width: int, height: int) -> tuple[int, int, int, int] | None:
    """(left, top, right, bottom) of an (x, y, w, h) box clipped to the image, or None when nothing is left."""
    x, y, w, h = box
    left, top = max(0, x), max(0, y)
    right, bottom = min(width, x + w), min(height, y + h)
    if right <= left or bottom <= top:
        return None
    return left, top, right, bottom


def crop_one(task) -> str | None:
    """Crop one face; returns an error message instead of raising (runs in worker processes)."""
    source, target, box, where = task
    try:
        with Image.open(source) as image:
            region = clamped_box(box, *image.size)
            if region is None:
                return f"{where}: face box {box} lies outside the {image.size[0]}x{image.size[1]} image {source}"
            face = image.crop(region)
            is_jpeg = Path(target).suffix.lower() in (".jpg", ".jpeg")
            if is_jpeg and face.mode not in ("RGB", "L"):
                face = face.convert("RGB")
            Path(target).parent.mkdir(parents=True, exist_ok=True)
            face.save(target, **({"quality": 95} if is_jpeg else {}))
    except (OSError, ValueError) as error:
        return f"{where}: cannot crop {source}: {error}"
    return None


def crop_faces(rows, images_dir: Path, crop_dir: Path, workers: int) -> None:
    unique = {row["name"]: row for row in rows}  # an image listed twice is cropped once
    tasks = [(str(images_dir / name), str(crop_dir / name), row["box"], f"{row['csv']} line {row['line']}")
             for name, row in unique.items()]
    if workers > 1:
        with Pool(workers) as pool:
            errors = [e for e in pool.imap(crop_one, tasks, chunksize=64) if e]
    else:
        errors = [e for e in map(crop_one, tasks) if e]
    if errors:
        raise PrepareError(f"{len(errors)} face(s) could not be cropped; first: {errors[0]}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m data_preprocessing.prepare_affectnet",
                                     description="Write AffectNet-7/-8 list files, optionally cropping the faces.")
    parser.add_argument("--train-csv", required=True, help="AffectNet training.csv")
    parser.add_argument("--val-csv", required=True, help="AffectNet validation.csv")
    parser.add_argument("--images", help="folder the subDirectory_filePath entries are relative to "
                                         "(required with --crop; otherwise only checks the images exist)")
    parser.add_argument("--out", required=True, help="output folder for the list files (and the crops)")
    parser.add_argument("--crop", action="store_true", help=f"crop faces into OUT/{CROP_DIR}/")
    parser.add_argument("--workers", type=int, default=1, help="processes used for cropping (default 1)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    return parser


def prepare(argv=None) -> dict[tuple[str, int], list[tuple[str, int]]]:
    """Run the script with ``argv``; returns the written entries per (split, number of classes)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.crop and not args.images:
        raise PrepareError("--crop needs --images (the folder holding the original images)")
    if args.workers < 1:
        raise PrepareError(f"--workers must be >= 1, got {args.workers}")
    csv_paths = {"train": require_file(args.train_csv, "--train-csv"), "val": require_file(args.val_csv, "--val-csv")}
    images_dir = require_dir(args.images, "--images") if args.images else None
    out_dir = Path(args.out)
    outputs = [out_dir / name for name in OUTPUT_NAMES.values()] + ([out_dir / CROP_DIR] if args.crop else [])
    refuse_output_over_inputs(outputs, [*csv_paths.values(), images_dir])
    refuse_existing_outputs(outputs, args.overwrite)

    rows = {"train": read_annotations(csv_paths["train"], "--train-csv"),
            "val": read_annotations(csv_paths["val"], "--val-csv")}
    if images_dir is not None:
        check_images_exist(images_dir, rows["train"] + rows["val"])
    if args.crop:
        crop_faces(rows["train"] + rows["val"], images_dir, out_dir / CROP_DIR, args.workers)

    written = {}
    for (split, num_classes), file_name in OUTPUT_NAMES.items():
        entries = [(row["name"], row["label"]) for row in rows[split] if row["label"] < num_classes]
        write_split_list(out_dir / file_name, entries, f"{split} (AffectNet-{num_classes})",
                         AFFECTNET8_CLASSES[:num_classes])
        written[(split, num_classes)] = entries
    print(f"wrote {', '.join(OUTPUT_NAMES.values())} in {out_dir}")
    return written


def main(argv=None) -> int:
    return run_main(prepare, argv)


if __name__ == "__main__":
    raise SystemExit(main())
