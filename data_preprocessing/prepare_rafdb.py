"""Turn RAF-DB's ``list_patition_label.txt`` into the released list files.

``train_00001.jpg 5`` (labels 1..7) becomes ``train_00001_aligned.jpg 4`` (0-based)
in ``raf_db_basic_train.txt``; ``test_*`` lines go to ``raf_db_basic_test.txt``.
Label order (0..6): Surprise, Fear, Disgust, Happiness, Sadness, Anger, Neutral.

    python -m data_preprocessing.prepare_rafdb --list list_patition_label.txt \\
        [--images basic/Image/aligned] --out datas/RAF-DB [--overwrite]

The RAF-DB loader then reads the aligned images from ``datas/RAF-DB/basic/``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from data_preprocessing._prepare_common import (
    PrepareError,
    check_images_decode,
    claim_prepared_outputs,
    layout_list_paths,
    parse_int,
    require_dir,
    require_file,
    run_main,
    utf8_error,
    write_layout_lists,
)
from data_preprocessing.errors import RowErrors
from data_preprocessing.layouts import LIST_LAYOUTS

LAYOUT = LIST_LAYOUTS["RAF-DB"]
MAX_MISSING_SHOWN = 5


def aligned_name(name: str) -> str:
    """``train_00001.jpg`` -> ``train_00001_aligned.jpg``."""
    stem, dot, extension = name.rpartition(".")
    if not dot:
        stem, extension = name, ""
    return f"{stem}_aligned{dot}{extension}"


def parse_partition_list(path: Path) -> dict[str, list[tuple[str, int]]]:
    """Read ``<name> <label 1..7>`` lines into ``{"train": [(aligned name, label 0..6)], "test": [...]}``."""
    try:
        return _parse_partition_lines(path)
    except UnicodeDecodeError:
        raise utf8_error(path, "--list") from None


def _parse_partition_lines(path: Path) -> dict[str, list[tuple[str, int]]]:
    splits: dict[str, list[tuple[str, int]]] = {split: [] for split in LAYOUT.list_files}
    seen: dict[str, int] = {}
    bad_rows = RowErrors()
    with open(path, encoding="utf-8-sig") as handle:  # a byte-order mark is accepted, as in the CSV readers
        for line_number, line in enumerate(handle, start=1):
            if line.split():
                with bad_rows.row():
                    split, name, label = _parse_line(line, path, line_number, seen)
                    splits[split].append((aligned_name(name), label - 1))
    bad_rows.raise_any()
    if not seen:
        raise PrepareError(f"{path}: no image lines found")
    return splits


def _parse_line(line: str, path: Path, line_number: int, seen: dict) -> tuple[str, str, int]:
    """``(split, image name, label 1..7)`` of one line; ``seen`` maps each name to its first line."""
    fields = line.split()
    if len(fields) != 2:
        raise PrepareError(f"{path}:{line_number}: expected '<image name> <label>', got {line.strip()!r}")
    name, label_text = fields
    split = name.split("_", 1)[0]
    if split not in LAYOUT.list_files or "/" in name or "\\" in name:
        raise PrepareError(f"{path}:{line_number}: image name {name!r} must start with "
                           f"'train_' or 'test_' and contain no folder")
    label = parse_int(label_text, path, line_number, "label")
    if not 1 <= label <= len(LAYOUT.classes):
        raise PrepareError(f"{path}:{line_number}: label {label_text!r} is outside 1..{len(LAYOUT.classes)}")
    if name in seen:
        raise PrepareError(f"{path}:{line_number}: image {name!r} already listed on line {seen[name]}")
    seen[name] = line_number
    return split, name, label


def check_images(images_dir: Path, splits) -> None:
    """PrepareError naming the first few listed aligned images that are not in ``images_dir``, then
    each one that does not decode."""
    names = [name for entries in splits.values() for name, _ in entries]
    missing = [name for name in names if not (images_dir / name).is_file()]
    if missing:
        shown = ", ".join(missing[:MAX_MISSING_SHOWN]) + (" ..." if len(missing) > MAX_MISSING_SHOWN else "")
        raise PrepareError(f"--images {images_dir}: {len(missing)} aligned image(s) listed but missing: {shown}")
    check_images_decode([(images_dir / name, "--images") for name in names])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m data_preprocessing.prepare_rafdb",
                                     description="Write RAF-DB basic list files (0-based labels, aligned image names).")
    parser.add_argument("--list", required=True, help="RAF-DB list_patition_label.txt")
    parser.add_argument("--images", help="folder of aligned images (optional; checks every listed image exists)")
    parser.add_argument("--out", required=True, help="output folder for raf_db_basic_{train,test}.txt")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output list files")
    return parser


def prepare(argv=None) -> dict[str, list[tuple[str, int]]]:
    """Run the script with ``argv``; returns the written entries per split."""
    args = build_parser().parse_args(argv)
    list_path = require_file(args.list, "--list")
    images_dir = require_dir(args.images, "--images") if args.images else None
    out_dir = Path(args.out)
    with claim_prepared_outputs(out_dir, layout_list_paths(out_dir, LAYOUT), [list_path], args.overwrite):
        splits = parse_partition_list(list_path)
        if images_dir is not None:
            check_images(images_dir, splits)
        write_layout_lists(out_dir, LAYOUT, splits)
    return splits


def main(argv=None) -> int:
    """The command line; exit status 0, or 2 with a one-line error."""
    return run_main(prepare, argv)


if __name__ == "__main__":
    raise SystemExit(main())
