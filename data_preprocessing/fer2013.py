"""Kaggle's fer2013.csv (emotion, pixels, Usage): its rows read and checked, without torch, for
the FER2013 dataset and the FERPlus prepare script alike."""
import contextlib
import csv
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from .errors import DataError, RowErrors
from .files import invalid_utf8_position, non_regular_kind
from .layouts import FER2013_CLASSES

__all__ = ["FER2013_USAGE_TO_SPLIT", "FER2013_SIDE", "Fer2013Row", "fer2013_csv_path", "read_fer2013_rows",
           "parse_fer2013_pixels", "load_fer2013_csv"]

FER2013_USAGE_TO_SPLIT = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}
FER2013_COLUMNS = ("emotion", "pixels", "Usage")
FER2013_SIDE = 48


def fer2013_csv_path(data_root: str) -> str | None:
    """The fer2013.csv to use for `data_root` (the csv itself or data_root/fer2013.csv), else None."""
    for candidate in (data_root, os.path.join(data_root, "fer2013.csv")):
        kind = non_regular_kind(candidate)
        if kind is None:
            return candidate
        if kind not in ("missing", "a folder"):
            raise DataError(f"{candidate} is {kind}, not a regular csv file")
    return None


@dataclass(frozen=True)
class Fer2013Row:
    """One data row of fer2013.csv: `where` ("file:line"), `index` (0-based among the data rows),
    `emotion` (a FER2013 label), `usage` (Training, PublicTest or PrivateTest) and the unparsed
    `pixels` string (see `parse_fer2013_pixels`)."""

    where: str
    index: int
    emotion: int
    usage: str
    pixels: str


def read_fer2013_rows(csv_path, bad_rows: RowErrors | None = None) -> Iterator[Fer2013Row]:
    """Every data row of Kaggle's fer2013.csv, in file order, with its header, width, Usage and
    emotion checked (DataError naming file:line); blank lines are skipped. With `bad_rows`, a bad
    row is recorded there and skipped, so the caller can report them all."""
    csv_path = os.fspath(csv_path)
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as handle:
            yield from _fer2013_rows(csv.reader(handle), csv_path, bad_rows)
    except UnicodeDecodeError:
        raise DataError(invalid_utf8_position(csv_path) + "; fer2013.csv must be UTF-8 (or ASCII)") from None


def _fer2013_rows(reader, csv_path: str, bad_rows: RowErrors | None) -> Iterator[Fer2013Row]:
    header = [h.strip() for h in next(reader, [])]
    columns = {h.lower(): i for i, h in enumerate(header)}
    absent = [c for c in FER2013_COLUMNS if c.lower() not in columns]
    if absent:
        raise DataError(f"{csv_path}:1: header lacks column(s) {absent} (got {header})")
    emotion_col, pixels_col, usage_col = (columns[c.lower()] for c in FER2013_COLUMNS)
    data_rows = (row for row in reader if any(cell.strip() for cell in row))  # lazy: line_num stays the row's
    for index, row in enumerate(data_rows):
        checked = None
        with bad_rows.row() if bad_rows is not None else contextlib.nullcontext():
            checked = _checked_row(row, f"{csv_path}:{reader.line_num}", index, len(header),
                                   emotion_col, pixels_col, usage_col)
        if checked is not None:
            yield checked


def _checked_row(row, where, index, width, emotion_col, pixels_col, usage_col) -> Fer2013Row:
    if len(row) < width:
        raise DataError(f"{where}: expected {width} columns, got {len(row)}")
    usage = row[usage_col].strip()
    if usage not in FER2013_USAGE_TO_SPLIT:
        raise DataError(f"{where}: Usage {usage!r} is not Training, PublicTest or PrivateTest")
    emotion = row[emotion_col].strip()
    if not emotion.isascii() or not emotion.isdigit() or int(emotion) >= len(FER2013_CLASSES):
        raise DataError(f"{where}: emotion {emotion!r} is not a label 0..{len(FER2013_CLASSES) - 1}")
    return Fer2013Row(where, index, int(emotion), usage, row[pixels_col])


def parse_fer2013_pixels(text: str, where: str) -> np.ndarray:
    """A fer2013.csv pixel string (48*48 space-separated integers 0..255) -> uint8 [48, 48];
    DataError starting with `where` (file:line) and naming the first bad value otherwise."""
    with warnings.catch_warnings():
        # Older numpy warns and stops early at bad text (the length check catches it); newer raises.
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            values = np.fromstring(text, dtype=np.int64, sep=" ") if text.strip() else np.zeros(0, np.int64)
        except ValueError:
            raise DataError(f"{where}: pixels are not space-separated integers") from None
    count = FER2013_SIDE * FER2013_SIDE
    outside = np.flatnonzero((values < 0) | (values > 255))
    if values.size != count or len(outside):
        named = (f"; value {int(values[outside[0]])} (pixel {int(outside[0]) + 1}) is outside 0..255"
                 + (f", and {len(outside) - 1} more" if len(outside) > 1 else "")) if len(outside) else ""
        raise DataError(f"{where}: pixels must be {count} values 0..255 "
                        f"({FER2013_SIDE}x{FER2013_SIDE}), got {values.size} values{named}")
    return values.astype(np.uint8).reshape(FER2013_SIDE, FER2013_SIDE)


def load_fer2013_csv(csv_path: str, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Rows of Kaggle's fer2013.csv for one split -> (pixels uint8 [n,48,48], labels, names).

    Names are `fer2013_<row index>` (0-based data row). Usage: Training -> train,
    PublicTest -> val, PrivateTest -> test.
    """
    wanted_usage = {s: u for u, s in FER2013_USAGE_TO_SPLIT.items()}.get(split)
    if wanted_usage is None:
        raise DataError(f"{csv_path}: split {split!r} unknown; fer2013.csv has train, val, test")
    rows = [row for row in read_fer2013_rows(csv_path) if row.usage == wanted_usage]
    if not rows:
        raise DataError(f"{csv_path}: no rows with Usage {wanted_usage} (split {split!r})")
    pixels = np.stack([parse_fer2013_pixels(row.pixels, row.where) for row in rows])
    labels = np.asarray([row.emotion for row in rows], dtype=np.int64)
    return pixels, labels, [f"fer2013_{row.index}" for row in rows]

