"""Build FERPlus images and list files from Kaggle's ``fer2013.csv`` and Microsoft's ``fer2013new.csv``.

Row i of ``fer2013new.csv`` (Usage, Image name, 10 vote counts) labels row i of
``fer2013.csv`` (emotion, pixels, Usage). Every row with an image name is
written as a 48x48 grayscale PNG ``OUT/img/<Image name>``; its label is the
FERPlus majority vote (see :func:`majority_vote`) and rows whose vote is not one
of the 8 emotions are left out of the lists. Splits: Training ->
``ferplus_training.txt``, PublicTest -> ``ferplus_valid.txt``, PrivateTest ->
``ferplus_test.txt``. Label order (0..7): Neutral, Happiness, Surprise,
Sadness, Anger, Disgust, Fear, Contempt.

    python -m data_preprocessing.prepare_ferplus --fer2013 fer2013.csv \\
        --ferplus fer2013new.csv --out datas/FERPlus [--overwrite]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from data_preprocessing._prepare_common import (
    PrepareError, parse_int, read_csv_rows, refuse_existing_outputs,
    refuse_output_over_inputs, require_file, run_main, write_split_list,
)

from data_preprocessing.datasets import FERPLUS_CLASSES
VOTE_COLUMNS = ["neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt",
                "unknown", "NF"]
FERPLUS_HEADER = ["Usage", "Image name", *VOTE_COLUMNS]
FER2013_HEADER = ["emotion", "pixels", "Usage"]
USAGE_TO_SPLIT = {"Training": "train", "PublicTest": "valid", "PrivateTest": "test"}
OUTPUT_NAMES = {"train": "ferplus_training.txt", "valid": "ferplus_valid.txt", "test": "ferplus_test.txt"}
IMAGE_DIR = "img"
IMAGE_SIDE = 48


def majority_vote(votes) -> int | None:
    """FERPlus majority label of 10 vote counts, or None when the image is dropped.

    Counts of 1 or less are zeroed (outlier removal); the largest remaining
    count wins only if it is more than half of the remaining total, and only
    the 8 emotion columns (not unknown, not NF) give a label.
    """
    kept = [count if count > 1 else 0 for count in votes]
    total = sum(kept)
    best = max(kept)
    if total == 0 or not best > total / 2:
        return None  # "unknown"
    winner = kept.index(best)  # a strict majority is unique
    return winner if winner < len(FERPLUS_CLASSES) else None


def _parse_votes(row, path, line_number) -> list[int]:
    votes = [parse_int(text, path, line_number, f"vote count '{column}'")
             for column, text in zip(VOTE_COLUMNS, row[2:2 + len(VOTE_COLUMNS)])]
    if any(count < 0 for count in votes):
        raise PrepareError(f"{path} line {line_number}: vote counts must be >= 0, got {votes}")
    return votes


def _parse_pixels(text: str, path, line_number) -> np.ndarray:
    fields = text.split()
    if len(fields) != IMAGE_SIDE * IMAGE_SIDE:
        raise PrepareError(f"{path} line {line_number}: expected {IMAGE_SIDE * IMAGE_SIDE} pixel values, "
                           f"got {len(fields)}")
    try:
        pixels = np.array(fields, dtype=np.int64)
    except ValueError:
        raise PrepareError(f"{path} line {line_number}: pixels must be integers 0..255") from None
    if pixels.min() < 0 or pixels.max() > 255:
        raise PrepareError(f"{path} line {line_number}: pixel values must be in 0..255")
    return pixels.astype(np.uint8).reshape(IMAGE_SIDE, IMAGE_SIDE)


def _check_image_name(name: str, path, line_number, seen: dict) -> None:
    if "/" in name or "\\" in name or name in (".", "..") or any(c.isspace() for c in name):
        raise PrepareError(f"{path} line {line_number}: image name {name!r} must be a plain file name "
                           f"without spaces")
    if name in seen:
        raise PrepareError(f"{path} line {line_number}: image name {name!r} already used on line {seen[name]}")
    seen[name] = line_number


def _usage_split(usage: str, path, line_number) -> str:
    if usage not in USAGE_TO_SPLIT:
        raise PrepareError(f"{path} line {line_number}: Usage {usage!r} is not one of {', '.join(USAGE_TO_SPLIT)}")
    return USAGE_TO_SPLIT[usage]


def read_ferplus_votes(ferplus_path: Path) -> list[tuple[int, str, str, list[int]]]:
    """Validated ``(line, usage, image name, votes)`` for every data row of fer2013new.csv."""
    rows = []
    seen: dict[str, int] = {}
    for line_number, row in read_csv_rows(ferplus_path, FERPLUS_HEADER, "--ferplus"):
        usage, name = row[0].strip(), row[1].strip()
        _usage_split(usage, ferplus_path, line_number)
        votes = _parse_votes(row, ferplus_path, line_number)
        if name:
            _check_image_name(name, ferplus_path, line_number, seen)
        rows.append((line_number, usage, name, votes))
    return rows


def convert(fer2013_path: Path, ferplus_path: Path, out_dir: Path) -> dict[str, list[tuple[str, int]]]:
    """Write the images and return the kept ``(image name, label)`` entries per split."""
    plus_rows = read_ferplus_votes(ferplus_path)
    fer_count = sum(1 for _ in read_csv_rows(fer2013_path, FER2013_HEADER, "--fer2013"))
    if fer_count != len(plus_rows):
        raise PrepareError(f"--fer2013 {fer2013_path} has {fer_count} data rows but --ferplus {ferplus_path} "
                           f"has {len(plus_rows)}; the rows must correspond one to one")
    image_dir = out_dir / IMAGE_DIR
    image_dir.mkdir(parents=True, exist_ok=True)
    entries: dict[str, list[tuple[str, int]]] = {split: [] for split in OUTPUT_NAMES}
    fer_rows = read_csv_rows(fer2013_path, FER2013_HEADER, "--fer2013")
    for (fer_line, fer_row), (plus_line, usage, name, votes) in zip(fer_rows, plus_rows):
        if fer_row[2].strip() != usage:
            raise PrepareError(f"--ferplus {ferplus_path} line {plus_line} has Usage {usage!r} but "
                               f"--fer2013 {fer2013_path} line {fer_line} has {fer_row[2].strip()!r}; "
                               f"the files do not correspond")
        if not name:
            continue  # no FERPlus image for this FER2013 face
        pixels = _parse_pixels(fer_row[1], fer2013_path, fer_line)
        Image.fromarray(pixels, "L").save(image_dir / name)
        label = majority_vote(votes)
        if label is not None:
            entries[USAGE_TO_SPLIT[usage]].append((name, label))
    return entries


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m data_preprocessing.prepare_ferplus",
                                     description="Write FERPlus images and majority-vote list files.")
    parser.add_argument("--fer2013", required=True, help="Kaggle fer2013.csv (emotion, pixels, Usage)")
    parser.add_argument("--ferplus", required=True, help="FERPlus fer2013new.csv (Usage, Image name, 10 votes)")
    parser.add_argument("--out", required=True, help="output folder (gets img/ and ferplus_*.txt)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    return parser


def prepare(argv=None) -> dict[str, list[tuple[str, int]]]:
    """Run the script with ``argv``; returns the written entries per split."""
    args = build_parser().parse_args(argv)
    fer2013_path = require_file(args.fer2013, "--fer2013")
    ferplus_path = require_file(args.ferplus, "--ferplus")
    out_dir = Path(args.out)
    outputs = [out_dir / IMAGE_DIR, *(out_dir / name for name in OUTPUT_NAMES.values())]
    refuse_output_over_inputs(outputs, [fer2013_path, ferplus_path])
    refuse_existing_outputs(outputs, args.overwrite)
    entries = convert(fer2013_path, ferplus_path, out_dir)
    for split, split_entries in entries.items():
        write_split_list(out_dir / OUTPUT_NAMES[split], split_entries, split, FERPLUS_CLASSES)
    print(f"wrote images to {out_dir / IMAGE_DIR} and lists {', '.join(OUTPUT_NAMES.values())} in {out_dir}")
    return entries


def main(argv=None) -> int:
    return run_main(prepare, argv)


if __name__ == "__main__":
    raise SystemExit(main())
