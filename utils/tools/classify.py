"""What `predict` (photos, in predict.py) and `predict --video` (frames, in video.py) share.

Loading a photo (regular files only, upright, transparency composited onto `BACKGROUND`), one
`PredictionRow` per face found (or per image without detection), classifying the faces in
batches, drawing them, the JSON output, and the set-up of a run: its outputs claimed, the
classifier loaded (a checkpoint in PyTorch or an ONNX export), the face finder built. Neither
predict.py nor video.py imports the other; both import this module.
"""
import csv
import json
import os
import sys
import warnings
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from data_preprocessing import is_image_file
from data_preprocessing.datasets import to_rgb
from data_preprocessing.files import non_regular_kind
from data_preprocessing.outputs import (
    CreatedPaths,
    atomic_write,
    check_output_dir,
    printable,
    refuse_existing,
    remove_stale_temporaries,
)

from ..device import TestTimeModel, fast_path, resolve_device
from ..inference import load_trained_model
from ..model_info import EXPORT_INFO_FILE
from . import ToolError, faces

NO_FACE = "no face detected"
LARGE_PHOTO_FACTOR = 4  # an image this many times the model's input side is a photo, not a face crop
BACKGROUND = (255, 255, 255)  # transparent pixels are composited onto white before detection/classification
# Larger images are refused: about 430 MB as RGB (PIL itself refuses 179 megapixels and up).
MAX_PHOTO_PIXELS = 150_000_000


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


def face_finder(args, detect, side, max_pixels=None):
    """A `faces.FaceFinder` for the detection options, or None without detection (which they then
    refuse); `max_pixels`: images larger than that are searched shrunk (`--detect-pixels`)."""
    options = {"--min-score": args.min_score, "--upsample": args.upsample, "--largest": args.largest or None,
               "--detect-pixels": max_pixels}
    if not detect:
        given = [flag for flag, value in options.items() if value is not None]
        if given:
            raise ToolError(f"{given[0]} applies to detected faces, but detection is off"
                            + ("" if faces.available() else f" (the extra is not installed: {faces.EXTRA_HINT})"))
        return None
    return faces.FaceFinder(min_score=faces.DEFAULT_MIN_SCORE if args.min_score is None else args.min_score,
                            largest=args.largest, upsample=args.upsample or 0, side=side, max_pixels=max_pixels)


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
    name = printable(name)
    if finder is None:
        return [PredictionRow(name, **where)], [image]
    too_small = finder.too_small(image)
    if too_small:
        return [PredictionRow(name, error=too_small, **where)], [None]
    try:
        found = finder.find(image)
    except MemoryError:
        return [PredictionRow(name, error=f"out of memory searching {image.width}×{image.height} px for faces "
                                          f"at --upsample {finder.upsample}", **where)], [None]
    if not found:
        return [PredictionRow(name, error=NO_FACE, **where)], [None]
    rows = [PredictionRow(name, face=number, box=face.box, score=face.score, landmarks=face.landmarks, **where)
            for number, face in enumerate(found, start=1)]
    return rows, [face.crop for face in found]


def warn(message):
    print(f"warning: {message}", file=sys.stderr)


def not_regular(path):
    """Why `path` cannot be read as a file without blocking (a named pipe, a device, ...), or None."""
    kind = non_regular_kind(path)  # says why a path cannot be looked at, never raises OSError
    if kind == "missing":
        return "cannot read it (no such file)"
    return None if kind is None else f"not a regular file: {kind}"


def load_photo(path):
    """`(upright RGB image, None)` of an image file, or `(None, why it cannot be read)`.

    Only regular files are opened (a named pipe would block); transparency is composited onto
    BACKGROUND; images over MAX_PHOTO_PIXELS are refused before they are decoded.
    """
    problem = not_regular(path)
    if problem:
        return None, problem
    return decode_photo(path)


def decode_photo(source):
    """`load_photo` of a path or binary file object (e.g. an uploaded image in memory), without the file check."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # MAX_PHOTO_PIXELS is the limit here
            with Image.open(source) as image:
                if image.width * image.height > MAX_PHOTO_PIXELS:
                    return None, (f"{image.width}×{image.height} px is more than the {MAX_PHOTO_PIXELS // 10 ** 6} "
                                  f"megapixels this tool reads")
                image.load()
                return on_background(faces.upright(image)), None
    except UnidentifiedImageError:
        return None, "cannot read image: not in an image format PIL recognises (or damaged)"
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        return None, f"cannot read image: {error}"


def on_background(image):
    """An RGB copy of `image`, its transparent parts (alpha, or a palette's transparent colour) on BACKGROUND."""
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, BACKGROUND + (255,)), rgba).convert("RGB")
    return to_rgb(image)


def faces_of(path, finder):
    """`(upright image, rows, crops)` of one file; image None and an error row when it cannot be read."""
    if not is_image_file(path):
        return None, [PredictionRow(printable(path), error=f"not an image file (extension {path.suffix or 'none'})")
                      ], [None]
    image, problem = load_photo(path)
    if problem:
        return None, [PredictionRow(printable(path), error=problem)], [None]
    return (image, *face_rows(image, str(path), finder))


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


def write_json(path, rows, trained, k, checkpoint, partial=None):
    """The JSON document of the rows; `partial`: why it holds only some of the inputs (an interrupted run)."""
    document = {"checkpoint": printable(checkpoint or trained.info.path), "format": trained.info.format,
                "classes": trained.classes,
                "image_size": trained.image_size, "size": trained.size, "top_k": k,
                "partial": partial, "predictions": [json_record(row, trained.classes, k) for row in rows]}
    write_output(path, "--json", lambda handle: json.dump(document, handle, indent=2))


def write_outputs(args, rows, setup, csv_rows, partial=None):
    """--csv (`csv_rows()`: its rows, the header first, made only when asked for) and --json, each
    written atomically over its claimed placeholder; returns their paths. `partial` says why they
    hold only some inputs."""
    if args.csv:
        write_output(args.csv, "--csv", lambda handle: csv.writer(handle).writerows(csv_rows()))
    if args.json:
        write_json(args.json, rows, setup.trained, setup.k, args.checkpoint, partial)
    return [path for path in (args.csv, args.json) if path]


def write_output(path, flag, write, mode="w", created=None):
    """Write an output atomically, first removing what killed earlier writes of it left; with
    `created`, its folder is made and it is recorded there (removed again if the run fails)."""
    path = Path(path)
    folder = path.parent if created is None else created.make_dir(path.parent, flag)
    remove_stale_temporaries(folder, path.name)
    atomic_write(path, write, mode=mode, flag=flag)
    if created is not None:
        created.add(path)


def claim_prediction_outputs(args, created):
    """Before any work: --csv / --json are created, empty, as new files in existing, writable
    folders (predict never overwrites; of two runs naming the same file, the second is refused)."""
    if args.csv and args.json and Path(args.csv).resolve() == Path(args.json).resolve():
        raise ToolError("--csv and --json name the same file")
    for flag, path in (("--csv", args.csv), ("--json", args.json)):
        if path:
            created.claim(path, flag)


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
    resolved = {path: path.resolve() for path in files if suffix or is_image_file(path)}
    if not resolved:
        return {}
    common = Path(os.path.commonpath([full.parent for full in resolved.values()]))
    relative = {path: full.relative_to(common) for path, full in resolved.items()}
    return {path: Path(folder) / name.with_suffix(suffix or (name.suffix if _image_format(name) else ".png"))
            for path, name in relative.items()}


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


def count(number, noun):
    return f"{number} {noun}{'' if number == 1 else 's'}"


def load_prediction_model(args):
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
    trained, where = onnx_model.load_onnx_classifier(args.onnx, args.device)
    trained.model = TestTimeModel(trained.model, tta=args.tta)
    return trained, torch.device("cpu"), where + (", flip TTA" if args.tta == "flip" else "")


def inference_options(args):
    """`(name, on)` of the inference options, as the summary line names them."""
    return (("--amp", args.amp), ("--channels-last", args.channels_last), ("--compile", args.compile),
            ("flip TTA", args.tta == "flip"))



@dataclass
class Setup:
    """What a predict run works with, once its options are checked and its model loaded."""
    trained: object   # utils.inference.TrainedModel
    device: torch.device
    where: str        # where the model runs, as the summary line names it
    k: int            # classes listed per face
    finder: object    # faces.FaceFinder, or None without detection
    targets: dict     # {input: annotated copy}
    created: CreatedPaths  # what this run made, removed again if it fails


def set_up(args, list_inputs, created, annotation_suffix=None):
    """`(inputs, Setup)` before any work on the inputs: the outputs claimed (recorded in `created`),
    the inputs listed (`list_inputs()`), the model loaded, the face finder built."""
    claim_prediction_outputs(args, created)
    detect = detection_wanted(args.detect)
    files = list_inputs()
    targets = claim_annotations(args.annotate, files, annotation_suffix)
    trained, device, where = load_prediction_model(args)
    k = min(args.top_k, len(trained.classes))
    return files, Setup(trained, device, where, k, face_finder(args, detect, trained.image_size, args.detect_pixels),
                        targets, created)
