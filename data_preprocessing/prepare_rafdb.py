"""Turn RAF-DB's ``list_patition_label.txt`` into the released list files.

``train_00001.jpg 5`` (labels 1..7) becomes ``train_00001_aligned.jpg 4`` (0-based)
in ``raf_db_basic_train.txt``; ``test_*`` lines go to ``raf_db_basic_test.txt``.
Label order (0..6): Surprise, Fear, Disgust, Happiness, Sadness, Anger, Neutral.

    python -m data_preprocessing.prepare_rafdb --list list_patition_label.txt \\
        [--images basic/Image/aligned] --out datas/RAF-DB [--overwrite]

The RAF-DB loader then reads the aligned images from ``datas/RAF-DB/basic/``.
"""

import os
from pathlib import Path

from data_preprocessing._prepare_common import (
    PrepareError,
    check_images_exist,
    claim_prepared_outputs,
    decode_problem,
    parse_arguments,
    parse_int,
    refuse_problems,
    require_dir,
    require_file,
    run_main,
    utf8_errors,
    write_layout_lists,
)
from data_preprocessing.errors import RowErrors
from data_preprocessing.layouts import LIST_LAYOUTS

LAYOUT = LIST_LAYOUTS["RAF-DB"]
DESCRIPTION = "Write RAF-DB basic list files (0-based labels, aligned image names)."
ARGUMENTS = {
    "--list": {"required": True, "help": "RAF-DB list_patition_label.txt"},
    "--images": {"help": "folder of aligned images (optional; checks every listed image exists)"},
    "--out": {"required": True, "type": Path, "help": "output folder for raf_db_basic_{train,test}.txt"},
    "--overwrite": {"action": "store_true", "help": "replace existing output list files"},
}


def aligned_name(name: str) -> str:
    """``train_00001.jpg`` -> ``train_00001_aligned.jpg``."""
    stem, extension = os.path.splitext(name)
    return f"{stem}_aligned{extension}"


def parse_partition_list(path: Path) -> dict[str, list[tuple[str, int]]]:
    """Read ``<name> <label 1..7>`` lines into ``{"train": [(aligned name, label 0..6)], "test": [...]}``."""
    splits: dict[str, list[tuple[str, int]]] = {split: [] for split in LAYOUT.list_files}
    seen: dict[str, int] = {}
    bad_rows = RowErrors()
    # a byte-order mark is accepted, as in the CSV readers
    with utf8_errors(path, "--list"), open(path, encoding="utf-8-sig") as handle:
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


def prepare(argv=None) -> dict[str, list[tuple[str, int]]]:
    """Run the script with ``argv``; returns the written entries per split."""
    args = parse_arguments("prepare_rafdb", DESCRIPTION, ARGUMENTS, argv)
    list_path = require_file(args.list, "--list")
    images_dir = require_dir(args.images, "--images") if args.images else None
    with claim_prepared_outputs(args, [LAYOUT], [list_path]):
        splits = parse_partition_list(list_path)
        if images_dir is not None:  # the first few missing images named, then each one that does not decode
            names = [name for entries in splits.values() for name, _ in entries]
            check_images_exist(images_dir, [(name, name) for name in names], "aligned image(s) listed but missing")
            refuse_problems(map(decode_problem, [(images_dir / name, "--images") for name in names]))
        write_layout_lists(args.out, LAYOUT, splits)
    return splits


def main(argv=None) -> int:
    """The command line; exit status 0, or 2 with a one-line error."""
    return run_main(prepare, argv)


if __name__ == "__main__":
    raise SystemExit(main())
