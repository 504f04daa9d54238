"""`predict`: the top-k expressions of face images, with the base branch, on CPU or GPU.

Photos go through `faces.py` first when the face-detection extra is installed (or with
`--detect`): EXIF orientation, detection, 5-point alignment, then one row per face; with
`--no-detect` (or without the extra) each image is taken as a face crop, as in the datasets.
Unreadable or non-image files and images without a face become error rows; they never stop the
batch. `--annotate DIR` draws the results on copies of the images; `--video` is in `video.py`.
"""
import csv
import json
import os
import sys
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from data_preprocessing import DataError, ImageListDataset, is_image_file
from data_preprocessing.outputs import (
    atomic_write,
    check_output_dir,
    check_output_file,
    make_output_dir,
    refuse_existing,
    remove_stale_temporaries,
)

from ..checkpoint import EXPORT_INFO_FILE
from ..device import TestTimeModel, fast_path, resolve_device
from ..inference import load_trained_model
from . import ToolError, faces

NO_FACE = "no face detected"
LARGE_PHOTO_FACTOR = 4  # an image this many times the model's input side is a photo, not a face crop


@dataclass
class PredictionRow:
    """One classified face (or one image, without detection), or one file that was skipped."""
    image: str
    face: int | None = None                  # 1-based index of the detected face, left to right
    box: tuple | None = None                 # (x, y, w, h) in pixels of the upright image
    score: float | None = None               # the detector's score
    landmarks: tuple | None = None           # five (x, y), in faces.LANDMARK_NAMES order
    probabilities: list | None = None        # softmax over the classes, in label order
    error: str | None = None
    frame: int | None = None                 # video frame, from 0
    time: float | None = None                # video time of the frame, in seconds

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

def detection_wanted(flag):
    """Whether to detect faces: `--detect`/`--no-detect` as given, else when the extra is installed.

    `--detect` without the extra is an error naming the install command.
    """
    if flag is None:
        return faces.available()
    if flag and not faces.available():
        raise faces.MissingExtra(f"--detect needs the face-detection extra, which is not installed; "
                                 f"install it with: {faces.EXTRA_HINT}")
    return flag


def face_finder(args, detect, side):
    """A `faces.FaceFinder` for the detection options, or None without detection (which they then refuse)."""
    options = {"--min-score": args.min_score, "--upsample": args.upsample, "--largest": args.largest or None}
    if not detect:
        given = [flag for flag, value in options.items() if value is not None]
        if given:
            raise ToolError(f"{given[0]} applies to detected faces, but detection is off"
                            + ("" if faces.available() else f" (the extra is not installed: {faces.EXTRA_HINT})"))
        return None
    return faces.FaceFinder(min_score=args.min_score or 0.0, largest=args.largest,
                            upsample=args.upsample or 0, side=side)


def is_photo(image, input_side):
    """Whether an image is much larger than a face crop (the model would shrink it more than 4×)."""
    return max(image.size) > LARGE_PHOTO_FACTOR * input_side


def photo_warning(name, image):
    return (f"{name}: {image.width}×{image.height} px is much larger than a face crop and is classified "
            f"whole; to find its faces first: {faces.EXTRA_HINT}")


def face_rows(image, name, finder, **where):
    """`(rows, crops)` of one upright image: one per face `finder` finds, or the whole image without one.

    A row without a crop (None) says no face was found; `where` adds the frame and time of a video frame.
    """
    if finder is None:
        return [PredictionRow(name, **where)], [image]
    found = finder.find(image)
    if not found:
        return [PredictionRow(name, error=NO_FACE, **where)], [None]
    rows = [PredictionRow(name, face=number, box=face.box, score=face.score, landmarks=face.landmarks, **where)
            for number, face in enumerate(found, start=1)]
    return rows, [face.crop for face in found]


# ------------------------------------------------------------------------------ prediction

def warn(message):
    print(f"warning: {message}", file=sys.stderr)


def predict_files(trained, files, device, batch_size=32, finder=None, on_image=None, warn_photos=False):
    """Classify every file (every face `finder` finds, if given); returns PredictionRows in input order.

    A warning line goes to stderr for each skipped file, face-less image and, with `warn_photos`
    (detection is off for want of the extra), image much larger than a face crop;
    `on_image(path, image, rows)` is called for each readable image once its rows are classified,
    in input order.
    """
    if batch_size < 1:
        raise ToolError(f"--batch-size must be at least 1, got {batch_size}")
    reader = ImageListDataset([str(f) for f in files], [0] * len(files), trained.classes)
    batch = PendingBatch(trained.model, trained.transform(), device, batch_size, on_image)
    all_rows = []
    for index, path in enumerate(files):
        image, rows, crops = faces_of(reader, index, path, finder)
        if warn_photos and image is not None and is_photo(image, trained.image_size):
            warn(photo_warning(path, image))
        for row in rows:
            if row.error:
                warn(f"{row.image}: {row.error}")
        all_rows += rows
        batch.add(path, image, rows, crops)
    batch.flush()
    return all_rows


def faces_of(reader, index, path, finder):
    """`(upright image, rows, crops)` of one file; image None and an error row when it cannot be read."""
    if not is_image_file(path):
        return None, [PredictionRow(str(path), error=f"not an image file (extension {path.suffix or 'none'})")], [None]
    try:
        image = faces.upright(reader.load_image(index))
    except DataError as error:
        return None, [PredictionRow(str(path), error=f"cannot read image: {_reason(error)}")], [None]
    return (image, *face_rows(image, str(path), finder))


def _reason(error):
    cause = error.__cause__
    return str(cause) if cause is not None else str(error)


class PendingBatch:
    """Collects the faces of images and classifies them `batch_size` at a time.

    `on_image(key, image, rows)` (optional) is called for every added image, in order, once all its
    rows are classified; images wait for it only until their faces' batch is flushed.
    """

    def __init__(self, model, transform, device, batch_size, on_image=None):
        self.model, self.transform, self.device, self.batch_size = model, transform, device, batch_size
        self.on_image = on_image
        self.rows, self.tensors, self.waiting = [], [], deque()

    def add(self, key, image, rows, crops):
        """Queue `rows` of one image; `crops[i]` is row i's face (None for a row that is not classified)."""
        self.waiting.append((key, image, rows))
        for row, crop in zip(rows, crops):
            if crop is not None:
                self.rows.append(row)
                self.tensors.append(self.transform(crop))
                if len(self.rows) >= self.batch_size:
                    self.flush()
        self._release()

    @torch.no_grad()
    def flush(self):
        if self.rows:
            logits = self.model(torch.stack(self.tensors).to(self.device))
            for row, probabilities in zip(self.rows, torch.softmax(logits.float(), dim=1).cpu().tolist()):
                row.probabilities = probabilities
            self.rows, self.tensors = [], []
        self._release()

    def _release(self):
        while self.waiting and all(row.error or row.probabilities is not None for row in self.waiting[0][2]):
            key, image, rows = self.waiting.popleft()
            if self.on_image is not None and image is not None:
                self.on_image(key, image, rows)


# ------------------------------------------------------------------------------ output

def format_row(row, classes, k):
    where = row.image + (f" [face {row.face} at x={row.box[0]} y={row.box[1]} w={row.box[2]} "
                         f"h={row.box[3]}, score {row.score:.2f}]" if row.box else "")
    if row.error:
        return f"{where}: skipped ({row.error})"
    return f"{where}: " + ", ".join(f"{name} {p:.1%}" for name, p in row.top(classes, k))


LANDMARK_COLUMNS = [f"{name}_{axis}" for name in faces.LANDMARK_NAMES for axis in "xy"]


def csv_header(k):
    ranked = [column for rank in range(1, k + 1) for column in (f"class_{rank}", f"prob_{rank}")]
    return ["image", "face", "box_x", "box_y", "box_w", "box_h", "score", *LANDMARK_COLUMNS, *ranked, "error"]


def csv_record(row, classes, k):
    box = list(row.box) if row.box else ["", "", "", ""]
    ranked = [""] * (2 * k)
    if not row.error:
        ranked = [value for name, p in row.top(classes, k) for value in (name, f"{p:.6f}")]
    return [row.image, row.face or "", *box, *face_details(row), *ranked, row.error or ""]


def face_details(row):
    """The score and the ten landmark coordinates of a detected face as CSV cells (blank otherwise)."""
    if row.landmarks is None:
        return [""] * (1 + len(LANDMARK_COLUMNS))
    return [f"{row.score:.4f}", *(f"{value:.1f}" for point in row.landmarks for value in point)]


def write_csv(path, rows, classes, k):
    def write(handle):
        writer = csv.writer(handle)
        writer.writerow(csv_header(k))
        writer.writerows(csv_record(row, classes, k) for row in rows)
    write_output(path, "--csv", write)


def json_record(row, classes, k):
    record = {"image": row.image, "face": row.face, "box": list(row.box) if row.box else None,
              "score": row.score, "landmarks": [list(point) for point in row.landmarks] if row.landmarks else None}
    if row.frame is not None:
        record.update(frame=row.frame, time=row.time)
    if row.error:
        return {**record, "error": row.error}
    return {**record,
            "top_k": [{"class": name, "probability": p} for name, p in row.top(classes, k)],
            "probabilities": dict(zip(classes, row.probabilities)), "error": None}


def write_json(path, rows, trained, k, checkpoint):
    document = {"checkpoint": str(checkpoint or trained.info.path), "format": trained.info.format,
                "classes": trained.classes,
                "image_size": trained.image_size, "size": trained.size, "top_k": k,
                "predictions": [json_record(row, trained.classes, k) for row in rows]}
    write_output(path, "--json", lambda handle: json.dump(document, handle, indent=2))


def write_output(path, flag, write):
    """Write a text output atomically, first removing what killed earlier writes of it left."""
    remove_stale_temporaries(Path(path).parent, Path(path).name)
    atomic_write(path, write, mode="w", flag=flag)


def claim_outputs(args):
    """Before any work: --csv / --json must be new files in existing, writable folders."""
    named = [("--csv", args.csv), ("--json", args.json)]
    refuse_existing(named, overwrite_flag=None)  # predict never overwrites
    for flag, path in named:
        if path:
            check_output_file(path, flag)


# ------------------------------------------------------------------------------ annotation

def claim_annotations(folder, files, suffix=None):
    """Before any work: `{input: annotated copy}` under `folder` (which can be made), none there yet.

    `suffix` replaces the inputs' (a video's annotated copy is always .mp4).
    """
    if folder is None:
        return {}
    check_output_dir(folder, "--annotate", create=True)
    targets = annotation_targets(files, folder, suffix)
    refuse_existing([("--annotate", target) for target in targets.values()], overwrite_flag=None)
    return targets


def annotation_targets(files, folder, suffix=None):
    """Each image's annotated copy: its path relative to the inputs' common folder, under `folder`
    (as PNG where PIL cannot write the image's own format)."""
    images = [path for path in files if suffix or is_image_file(path)]
    if not images:
        return {}
    resolved = [path.resolve() for path in images]
    common = Path(os.path.commonpath([path.parent for path in resolved]))
    targets = {}
    for path, full in zip(images, resolved):
        relative = full.relative_to(common)
        new_suffix = suffix or (relative.suffix if _image_format(relative) else ".png")
        targets[path] = Path(folder) / relative.with_suffix(new_suffix)
    return targets


def _image_format(path):
    """PIL's name of the format it writes for the path's extension, or None."""
    name = Image.registered_extensions().get(Path(path).suffix.lower())
    return name if name in Image.SAVE else None


def annotate(image, rows, classes):
    """A copy of `image` with its rows drawn: box, landmarks and top class of each face, or a note."""
    drawn = [(row.box, row.landmarks, caption(row, classes), int(np.argmax(row.probabilities)))
             for row in rows if row.box is not None and row.probabilities is not None]
    if drawn:
        return faces.draw_faces(image, drawn)
    whole = [row for row in rows if row.probabilities is not None]  # without detection: the image is the face
    return faces.draw_note(image, caption(whole[0], classes) if whole else NO_FACE)


def caption(row, classes):
    name, probability = row.top(classes, 1)[0]
    return (f"{row.face}: " if row.face else "") + f"{name} {probability:.0%}"


class Annotator:
    """`on_image` for `predict_files`: writes each image's annotated copy to its target, counting them."""

    def __init__(self, targets, classes):
        self.targets, self.classes, self.written = targets, classes, 0

    def __call__(self, path, image, rows):
        target = Path(self.targets[path])
        folder = make_output_dir(target.parent, "--annotate")
        remove_stale_temporaries(folder, target.name)
        drawn = annotate(image, rows, self.classes)
        image_format = _image_format(target)
        options = {"quality": 92} if image_format == "JPEG" else {}
        atomic_write(target, lambda handle: drawn.save(handle, format=image_format, **options), flag="--annotate")
        self.written += 1


def summary(rows, detected):
    """`N faces classified in M images, ...` (`N images classified, ...` without detection)."""
    classified = [row for row in rows if not row.error]
    skipped = sum(1 for row in rows if row.error and row.error != NO_FACE)
    if not detected:
        return f"{count(len(classified), 'image')} classified, {skipped} skipped"
    no_face = sum(1 for row in rows if row.error == NO_FACE)
    return (f"{count(len(classified), 'face')} classified in {count(len({row.image for row in classified}), 'image')}, "
            f"{count(no_face, 'image')} without a face, {skipped} skipped")


def count(number, noun):
    return f"{number} {noun}{'' if number == 1 else 's'}"


def input_files(args):
    """The images to classify, or the video of `--video` (one or the other)."""
    if args.video:
        if args.inputs:
            raise ToolError("--video takes no image or folder arguments; classify those in a separate run")
        from . import video
        return [video.check_video_path(args.video)]
    if args.every is not None:
        raise ToolError("--every applies to --video")
    if not args.inputs:
        raise ToolError("give the images or folders to classify (or --video FILE)")
    return expand_inputs(args.inputs)


def load_classifier(args):
    """`(TrainedModel, device of its inputs, where it runs)`: a checkpoint's base branch in PyTorch,
    or with `--onnx` an ONNX export in onnxruntime (same call shape: N×3×S×S in, logits out)."""
    if args.onnx is None:
        trained = load_trained_model(args.checkpoint, dataset=args.dataset, class_list=args.classes,
                                     data_root=args.data_root, size=args.size, image_size=args.image_size)
        device = resolve_device(args.device)
        trained.model = fast_path(trained.model, device, amp=args.amp, channels_last=args.channels_last,
                                  compile=args.compile, tta=args.tta)
        return trained, device, str(device) + "".join(f", {name}" for name, on in inference_options(args) if on)
    fixed = [flag for flag, value in (("--size", args.size), ("--image-size", args.image_size),
                                      ("--dataset", args.dataset), ("--classes", args.classes),
                                      ("--data-root", args.data_root)) if value is not None]
    if fixed:
        raise ToolError(f"{fixed[0]} does not apply to --onnx: the export's {EXPORT_INFO_FILE} fixes the "
                        f"classes, model size and preprocessing")
    speed = [flag for flag, on in inference_options(args) if on and flag != "flip TTA"]
    if speed:
        raise ToolError(f"{speed[0]} does not apply to --onnx: onnxruntime runs the export in float32 "
                        "(--checkpoint takes the PyTorch fast path)")
    from . import onnx_model
    trained, where = onnx_model.load_classifier(args.onnx, args.device)
    trained.model = TestTimeModel(trained.model, tta=args.tta)
    return trained, torch.device("cpu"), where + (", flip TTA" if args.tta == "flip" else "")


def inference_options(args):
    """`(name, on)` of the inference options, as the summary line names them."""
    return (("--amp", args.amp), ("--channels-last", args.channels_last), ("--compile", args.compile),
            ("flip TTA", args.tta == "flip"))


def run(args):
    """The `predict` command; returns the exit status (1 when nothing could be classified)."""
    claim_outputs(args)
    if args.csv and args.json and Path(args.csv).resolve() == Path(args.json).resolve():
        raise ToolError("--csv and --json name the same file")
    detect = detection_wanted(args.detect)
    files = input_files(args)
    targets = claim_annotations(args.annotate, files, ".mp4" if args.video else None)
    trained, device, where = load_classifier(args)
    if args.top_k < 1:
        raise ToolError(f"--top-k must be at least 1, got {args.top_k}")
    k = min(args.top_k, len(trained.classes))
    finder = face_finder(args, detect, trained.image_size)
    if args.video:
        from . import video
        return video.run(args, trained, device, k, finder, targets)
    annotator = Annotator(targets, trained.classes) if targets else None
    rows = predict_files(trained, files, device, args.batch_size, finder=finder, on_image=annotator,
                         warn_photos=args.detect is None and finder is None)
    for row in rows:
        if not row.error:
            print(format_row(row, trained.classes, k))
    classified = sum(1 for row in rows if not row.error)
    print(f"{summary(rows, finder is not None)} ({count(len(files), 'file')}; {trained.size} model, "
          f"{trained.image_size}px input, {where})")
    if annotator is not None:
        print(f"wrote {count(annotator.written, 'annotated image')} to {args.annotate}")
    if args.csv:
        write_csv(args.csv, rows, trained.classes, k)
        print(f"wrote {args.csv}")
    if args.json:
        write_json(args.json, rows, trained, k, args.checkpoint)
        print(f"wrote {args.json}")
    return 0 if classified else 1
