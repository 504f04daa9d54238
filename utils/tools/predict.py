"""`predict`: the top-k expressions of face images, with the base branch, on CPU or GPU.

Faces are given pre-cropped (one face per image, the default) or found with OpenCV's frontal
face Haar cascade (`detect_faces`, an optional dependency). Unreadable or non-image files and
images without a detected face become error rows; they never stop the batch.
"""
import csv
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from data_preprocessing import DataError, ImageListDataset, clamp_box, is_image_file
from data_preprocessing.outputs import atomic_write, refuse_existing

from ..device import resolve_device
from ..inference import load_trained_model
from . import ToolError

OPENCV_HINT = "pip install opencv-python-headless"
HAAR_CASCADE = "haarcascade_frontalface_default.xml"


class MissingDependency(ToolError):
    """An optional package a requested feature needs is not installed."""


@dataclass
class PredictionRow:
    """One classified face (or one image, without detection), or one file that was skipped."""
    image: str
    face: int | None = None                  # 1-based index of the detected face
    box: tuple | None = None                 # (x, y, w, h) in image pixels
    probabilities: list | None = None        # softmax over the classes, in label order
    error: str | None = None

    def top(self, classes, k):
        """`[(class, probability)]` of the k most probable classes, most probable first."""
        order = np.argsort(-np.asarray(self.probabilities), kind="stable")[:k]
        return [(classes[i], float(self.probabilities[i])) for i in order]


# ------------------------------------------------------------------------------ inputs

def expand_inputs(paths):
    """The files to classify: files as given, folders expanded recursively (sorted; hidden skipped)."""
    files = []
    for path in map(Path, paths):
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file()
                            and not any(part.startswith(".") for part in p.relative_to(path).parts))
        elif path.is_file():
            files.append(path)
        else:
            raise ToolError(f"input not found: {path}")
    if not files:
        raise ToolError(f"no files found in {', '.join(map(str, paths))}")
    return files


# ------------------------------------------------------------------------------ face detection

_cascade = None


def detect_faces(pil_image):
    """Boxes `(x, y, w, h)` of the frontal faces in an RGB PIL image, left to right.

    Uses OpenCV's bundled Haar cascade; raises MissingDependency when OpenCV is not installed.
    """
    cascade = _face_cascade()
    gray = np.asarray(pil_image.convert("L"))
    found = cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(24, 24))
    return sorted((tuple(int(v) for v in box) for box in found), key=lambda box: (box[0], box[1]))


def _face_cascade():
    global _cascade
    if _cascade is None:
        try:
            import cv2
        except ImportError:
            raise MissingDependency(f"--detect-faces needs OpenCV, which is not installed; "
                                    f"install it with: {OPENCV_HINT}") from None
        path = os.path.join(cv2.data.haarcascades, HAAR_CASCADE)
        cascade = cv2.CascadeClassifier(path)
        if cascade.empty():
            raise ToolError(f"OpenCV could not load its face detector {path}")
        _cascade = cascade
    return _cascade


def crop_box(image, box):
    """The part of `image` inside `box` (x, y, w, h), clipped to the image."""
    corners = clamp_box(box, image.width, image.height)
    if corners is None:
        raise ToolError(f"face box {box} lies outside the {image.width}×{image.height} image")
    return image.crop(corners)


# ------------------------------------------------------------------------------ prediction

def predict_files(trained, files, device, batch_size=32, detect=False, warn=None):
    """Classify every file (every detected face with `detect`); returns PredictionRows in input order.

    `warn(message)` receives one line per skipped file or face-less image (default: stderr).
    """
    warn = warn or (lambda message: print(f"warning: {message}", file=sys.stderr))
    if batch_size < 1:
        raise ToolError(f"--batch-size must be at least 1, got {batch_size}")
    reader = ImageListDataset([str(f) for f in files], [0] * len(files), trained.classes)
    batch = PendingBatch(trained.model, trained.transform(), device, batch_size)
    rows = []
    for index, path in enumerate(files):
        for row, face in faces_of(reader, index, path, detect):
            rows.append(row)
            if row.error:
                warn(f"{row.image}: {row.error}")
            else:
                batch.add(row, face)
    batch.flush()
    return rows


def faces_of(reader, index, path, detect):
    """`(row, face image)` pairs of one file; an error row (face None) when nothing can be classified."""
    if not is_image_file(path):
        return [(PredictionRow(str(path), error=f"not an image file (extension {path.suffix or 'none'})"),
                 None)]
    try:
        image = reader.load_image(index)
    except DataError as error:
        return [(PredictionRow(str(path), error=f"cannot read image: {_reason(error)}"), None)]
    if not detect:
        return [(PredictionRow(str(path)), image)]
    boxes = detect_faces(image)
    if not boxes:
        return [(PredictionRow(str(path), error="no face detected"), None)]
    return [(PredictionRow(str(path), face=number, box=tuple(box)), crop_box(image, box))
            for number, box in enumerate(boxes, start=1)]


def _reason(error):
    cause = error.__cause__
    return str(cause) if cause is not None else str(error)


class PendingBatch:
    """Collects transformed faces and classifies them `batch_size` at a time."""

    def __init__(self, model, transform, device, batch_size):
        self.model, self.transform, self.device, self.batch_size = model, transform, device, batch_size
        self.rows, self.tensors = [], []

    def add(self, row, face):
        self.rows.append(row)
        self.tensors.append(self.transform(face))
        if len(self.rows) >= self.batch_size:
            self.flush()

    @torch.no_grad()
    def flush(self):
        if not self.rows:
            return
        logits = self.model(torch.stack(self.tensors).to(self.device))
        for row, probabilities in zip(self.rows, torch.softmax(logits.float(), dim=1).cpu().tolist()):
            row.probabilities = probabilities
        self.rows, self.tensors = [], []


# ------------------------------------------------------------------------------ output

def format_row(row, classes, k):
    where = row.image + (f" [face {row.face} at x={row.box[0]} y={row.box[1]} w={row.box[2]} "
                         f"h={row.box[3]}]" if row.box else "")
    if row.error:
        return f"{where}: skipped ({row.error})"
    return f"{where}: " + ", ".join(f"{name} {p:.1%}" for name, p in row.top(classes, k))


def csv_header(k):
    ranked = [column for rank in range(1, k + 1) for column in (f"class_{rank}", f"prob_{rank}")]
    return ["image", "face", "box_x", "box_y", "box_w", "box_h", *ranked, "error"]


def csv_record(row, classes, k):
    box = list(row.box) if row.box else ["", "", "", ""]
    ranked = [""] * (2 * k)
    if not row.error:
        ranked = [value for name, p in row.top(classes, k) for value in (name, f"{p:.6f}")]
    return [row.image, row.face or "", *box, *ranked, row.error or ""]


def write_csv(path, rows, classes, k):
    def write(handle):
        writer = csv.writer(handle)
        writer.writerow(csv_header(k))
        writer.writerows(csv_record(row, classes, k) for row in rows)
    atomic_write(path, write, mode="w")


def json_record(row, classes, k):
    record = {"image": row.image, "face": row.face, "box": list(row.box) if row.box else None}
    if row.error:
        return {**record, "error": row.error}
    return {**record,
            "top_k": [{"class": name, "probability": p} for name, p in row.top(classes, k)],
            "probabilities": dict(zip(classes, row.probabilities)), "error": None}


def write_json(path, rows, trained, k, checkpoint):
    document = {"checkpoint": str(checkpoint), "classes": trained.classes,
                "image_size": trained.image_size, "size": trained.size, "top_k": k,
                "predictions": [json_record(row, trained.classes, k) for row in rows]}
    atomic_write(path, lambda handle: json.dump(document, handle, indent=2), mode="w")


def run(args):
    """The `predict` command; returns the exit status (1 when nothing could be classified)."""
    refuse_existing([("--csv", args.csv), ("--json", args.json)], overwrite_flag=None)  # predict never overwrites
    if args.csv and args.json and Path(args.csv).resolve() == Path(args.json).resolve():
        raise ToolError("--csv and --json name the same file")
    files = expand_inputs(args.inputs)
    trained = load_trained_model(args.checkpoint, dataset=args.dataset, class_list=args.classes,
                             data_root=args.data_root, size=args.size, image_size=args.image_size)
    device = resolve_device(args.device)
    trained.model.to(device)
    if args.top_k < 1:
        raise ToolError(f"--top-k must be at least 1, got {args.top_k}")
    k = min(args.top_k, len(trained.classes))
    rows = predict_files(trained, files, device, args.batch_size, detect=args.detect_faces)
    for row in rows:
        if not row.error:
            print(format_row(row, trained.classes, k))
    classified = sum(1 for row in rows if not row.error)
    print(f"{classified} {'faces' if args.detect_faces else 'images'} classified, "
          f"{len(rows) - classified} skipped ({len(files)} files; {trained.size} model, "
          f"{trained.image_size}px input, {device})")
    if args.csv:
        write_csv(args.csv, rows, trained.classes, k)
        print(f"wrote {args.csv}")
    if args.json:
        write_json(args.json, rows, trained, k, args.checkpoint)
        print(f"wrote {args.json}")
    return 0 if classified else 1
