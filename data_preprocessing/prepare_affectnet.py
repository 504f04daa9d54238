"""Write AffectNet-7 / AffectNet-8 list files from AffectNet's ``training.csv`` and ``validation.csv``.

CSV columns: subDirectory_filePath, face_x, face_y, face_width, face_height,
facial_landmarks, expression, valence, arousal (the header row may be absent).
Expression codes 0 Neutral, 1 Happy, 2 Sad, 3 Surprise, 4 Fear, 5 Disgust,
6 Anger, 7 Contempt; 8..10 (None, Uncertain, Non-Face) are not expressions.
AffectNet-7 keeps codes 0..6 and AffectNet-8 codes 0..7, with the codes as labels.
As released, AffectNet's validation set is the test split: ``validation.csv`` gives
``affectnet_validation-cls{7,8}.txt``, the registry's ``test`` list files.

With ``--crop`` every kept face is cut to its box (clamped to the image) and
saved as ``OUT/Manually_trainval_croped/<subDirectory_filePath>``. Without it
the list names are the original relative paths; the loader reads images from
``OUT/Manually_trainval_croped/``, so place (or link) the image folder there.

    python -m data_preprocessing.prepare_affectnet --train-csv training.csv \\
        --val-csv validation.csv --images Manually_Annotated_Images --out datas/AffectNet \\
        [--crop] [--workers 4] [--overwrite]
"""

import os
from multiprocessing import Pool
from pathlib import Path, PurePosixPath

from PIL import Image

from data_preprocessing._prepare_common import (
    PrepareError,
    check_images_exist,
    claim_prepared_outputs,
    decode_problem,
    parse_arguments,
    parse_int,
    read_csv_rows,
    refuse_problems,
    require_dir,
    require_file,
    run_main,
    write_layout_lists,
)
from data_preprocessing.errors import RowErrors
from data_preprocessing.images import clamp_box
from data_preprocessing.layouts import LIST_LAYOUTS
from data_preprocessing.limits import check_open_files
from data_preprocessing.outputs import output_errors

LAYOUTS = (LIST_LAYOUTS["AffectNet-7"], LIST_LAYOUTS["AffectNet-8"])
CROP_DIR = LIST_LAYOUTS["AffectNet-8"].image_dir  # AffectNet-7 reads the same folder
AFFECTNET_HEADER = ["subDirectory_filePath", "face_x", "face_y", "face_width", "face_height",
                    "facial_landmarks", "expression", "valence", "arousal"]
MAX_EXPRESSION_CODE = 10
WORKERS_PER_CPU, MAX_WORKERS = 4, 64  # cropping is CPU-bound: more processes than this only cost memory
DESCRIPTION = "Write AffectNet-7/-8 list files, optionally cropping the faces."
ARGUMENTS = {
    "--train-csv": {"required": True, "help": "AffectNet training.csv"},
    "--val-csv": {"required": True, "help": "AffectNet validation.csv"},
    "--images": {"help": "folder the subDirectory_filePath entries are relative to "
                         "(required with --crop; otherwise only checks the images exist)"},
    "--out": {"required": True, "type": Path, "help": "output folder for the list files (and the crops)"},
    "--crop": {"action": "store_true", "help": f"crop faces into OUT/{CROP_DIR}/"},
    "--workers": {"type": int, "default": 1, "help": "processes used for cropping (default 1; at most "
                  f"{WORKERS_PER_CPU} per CPU and {MAX_WORKERS})"},
    "--overwrite": {"action": "store_true", "help": "replace existing outputs"},
}


def read_annotations(path: Path, flag: str, bad_rows: RowErrors, seen: dict) -> tuple[list[dict], int]:
    """Rows with an expression of 0..7, as dicts (name, box, label, where: ``file:line``), and the
    number of rows left out (codes 8..10). A bad row is recorded in ``bad_rows``; ``seen`` maps each
    image name to where it was first listed, across both CSV files, so an image listed twice is refused."""
    kept, left_out = [], 0
    for line_number, row in read_csv_rows(path, AFFECTNET_HEADER, flag, bad_rows, header_optional=True):
        with bad_rows.row():
            name, box, expression = _parse_row(row, path, line_number)
            if name in seen:
                raise PrepareError(f"{path}:{line_number}: image {name!r} already listed at {seen[name]}")
            seen[name] = f"{path}:{line_number}"
            if expression < len(LIST_LAYOUTS["AffectNet-8"].classes):
                kept.append({"name": name, "box": box, "label": expression, "where": seen[name],
                             "shown": f"{name} ({path.name}:{line_number})"})
            else:
                left_out += 1
    return kept, left_out


def _parse_row(row, path: Path, line_number: int) -> tuple[str, tuple, int]:
    """``(relative image name, face box, expression code)`` of one checked CSV row."""
    name = row[0].strip()
    relative = PurePosixPath(name.replace("\\", "/"))
    if not name or relative.is_absolute() or ".." in relative.parts or any(c.isspace() for c in name):
        raise PrepareError(f"{path}:{line_number}: subDirectory_filePath {name!r} must be a relative "
                           f"path without spaces")
    expression = parse_int(row[6], path, line_number, "expression")
    if not 0 <= expression <= MAX_EXPRESSION_CODE:
        raise PrepareError(f"{path}:{line_number}: expression {row[6]!r} is outside 0..{MAX_EXPRESSION_CODE}")
    box = [parse_int(row[col], path, line_number, AFFECTNET_HEADER[col]) for col in range(1, 5)]
    if box[2] <= 0 or box[3] <= 0:
        raise PrepareError(f"{path}:{line_number}: face_width and face_height must be > 0, got {box[2:]}")
    return relative.as_posix(), tuple(box), expression


def crop_one(task) -> str | None:
    """Crop one face; what is wrong with its input, or None. OutputError when the face cannot be
    written (disk full, no permission). Runs in worker processes."""
    source, target, box, where = task
    try:
        with Image.open(source) as image:
            region = clamp_box(box, *image.size)
            if region is None:
                return f"{where}: face box {box} lies outside the {image.size[0]}x{image.size[1]} image {source}"
            face = image.crop(region)
            is_jpeg = Path(target).suffix.lower() in (".jpg", ".jpeg")
            if is_jpeg and face.mode not in ("RGB", "L"):
                face = face.convert("RGB")
            with output_errors(target, "--out", "saving the face"):
                Path(target).parent.mkdir(parents=True, exist_ok=True)
                face.save(target, **({"quality": 95} if is_jpeg else {}))
    except (OSError, ValueError) as error:
        return f"{where}: cannot crop {source}: {error}"
    return None


def refuse_each(problem_of, tasks, workers: int) -> None:
    """``problem_of`` each task in ``workers`` processes; PrepareError naming each problem found
    (up to a bound) after all were tried. An OutputError stops at once: a full disk fails every
    later face too."""
    if workers == 1:
        return refuse_problems(map(problem_of, tasks))
    with Pool(workers) as pool:  # leaving the block terminates the workers, also on OutputError
        refuse_problems(pool.imap(problem_of, tasks, chunksize=64))


def check_workers(workers: int) -> None:
    """PrepareError unless 1 <= ``workers`` <= WORKERS_PER_CPU per CPU and MAX_WORKERS, LimitError
    when too few files may be opened for them, before any process is started."""
    limit = min(MAX_WORKERS, WORKERS_PER_CPU * (os.cpu_count() or 1))
    if not 1 <= workers <= limit:
        raise PrepareError(f"--workers {workers}: must be 1..{limit} on this machine "
                           f"({WORKERS_PER_CPU} per CPU, at most {MAX_WORKERS})")
    check_open_files(workers, in_process=False)


def prepare(argv=None) -> dict[tuple[str, int], list[tuple[str, int]]]:
    """Run the script with ``argv``; returns the written entries per (split, number of classes)."""
    args = parse_arguments("prepare_affectnet", DESCRIPTION, ARGUMENTS, argv)
    if args.crop and not args.images:
        raise PrepareError("--crop needs --images (the folder holding the original images)")
    check_workers(args.workers)
    csv_paths = {"train": require_file(args.train_csv, "--train-csv"), "test": require_file(args.val_csv, "--val-csv")}
    images_dir = require_dir(args.images, "--images") if args.images else None
    with claim_prepared_outputs(args, LAYOUTS, [*csv_paths.values(), images_dir],
                                folders=[CROP_DIR] if args.crop else []):
        return write_affectnet(args, csv_paths, images_dir)


def write_affectnet(args, csv_paths, images_dir):
    """Read and check both CSV files, crop or check the images, write the 7- and 8-class lists."""
    bad_rows, seen = RowErrors(), {}
    train, train_left_out = read_annotations(csv_paths["train"], "--train-csv", bad_rows, seen)
    test, test_left_out = read_annotations(csv_paths["test"], "--val-csv", bad_rows, seen)
    bad_rows.raise_any()
    if images_dir is not None:  # always there with --crop
        check_images_exist(images_dir, [(row["name"], row["shown"]) for row in train + test],
                           "listed image(s) missing")
        if args.crop:
            refuse_each(crop_one, [(str(images_dir / row["name"]), str(args.out / CROP_DIR / row["name"]),
                                    row["box"], row["where"]) for row in train + test], args.workers)
        else:  # cropping decodes every image; without it, check that each one does
            refuse_each(decode_problem, [(images_dir / row["name"], f"{row['where']}:") for row in train + test],
                        args.workers)

    written = {}
    for layout in LAYOUTS:
        num_classes = len(layout.classes)
        entries = {split: [(row["name"], row["label"]) for row in rows if row["label"] < num_classes]
                   for split, rows in (("train", train), ("test", test))}
        left_out = {"with expression 8..10 (None, Uncertain, Non-Face)": train_left_out + test_left_out}
        if num_classes < len(LIST_LAYOUTS["AffectNet-8"].classes):
            left_out["with expression 7 (Contempt)"] = sum(row["label"] >= num_classes for row in train + test)
        write_layout_lists(args.out, layout, entries, left_out=left_out)
        written.update({(split, num_classes): split_entries for split, split_entries in entries.items()})
    return written


def main(argv=None) -> int:
    """The command line; exit status 0, or 2 with a one-line error."""
    return run_main(prepare, argv)


if __name__ == "__main__":
    raise SystemExit(main())
