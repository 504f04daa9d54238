"""`predict`: the top-k expressions of face images, with the base branch, on CPU or GPU.

Photos go through `faces.py` first when the face-detection extra is installed (or with
`--detect`): EXIF orientation, detection, 5-point alignment, then one row per face; with
`--no-detect` (or without the extra) each image is taken as a face crop, as in the datasets.
Unreadable or non-image files and images without a face become error rows; they never stop the
batch. `--annotate DIR` draws the results on copies of the images; `--video` is in `video.py`.
"""
import sys
from pathlib import Path

from data_preprocessing.outputs import CreatedPaths, printable

from . import ToolError, faces
from .classify import (
    NO_FACE,
    PendingBatch,
    _image_format,
    annotate,
    count,
    faces_of,
    is_photo,
    not_regular,
    photo_warning,
    set_up,
    warn,
    write_output,
    write_outputs,
)
from .cli import EXIT_INTERRUPTED

# ------------------------------------------------------------------------------ inputs

def expand_inputs(paths, keep_special=False):
    """The files to classify: files as given, folders expanded recursively (sorted; hidden skipped).

    Anything that is not a regular file or a folder (a named pipe, a socket, a device) is never
    opened: with `keep_special` it is listed (to be reported as skipped), else left out with a warning.
    """
    files = []
    for path in map(Path, paths):
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if not p.is_dir()
                            and not any(part.startswith(".") for part in p.relative_to(path).parts))
        elif path.exists():
            files.append(path)
        else:
            raise ToolError(f"input not found: {printable(path)}")
    special = [path for path in files if not_regular(path)]
    if not keep_special:
        for path in special:
            warn(f"{printable(path)}: skipped, {not_regular(path)}")
        files = [path for path in files if path not in special]
    if not files:
        raise ToolError(f"no files found in {', '.join(map(printable, paths))}")
    return files


# ------------------------------------------------------------------------------ prediction

def predict_files(trained, files, device, batch_size=32, finder=None, on_image=None, warn_photos=False, rows=None):
    """Classify every file (every face `finder` finds, if given); returns PredictionRows in input order
    (appended to `rows` as they are made, if given, so that an interrupted run keeps them).

    A warning line goes to stderr for each skipped file, face-less image and, with `warn_photos`
    (detection is off for want of the extra), image much larger than a face crop;
    `on_image(path, image, rows)` is called for each readable image once its rows are classified,
    in input order.
    """
    batch = PendingBatch(trained.model, trained.transform(), device, batch_size, on_image)
    all_rows = [] if rows is None else rows
    for path in files:
        image, file_rows, crops = faces_of(path, finder)
        if warn_photos and image is not None and is_photo(image, trained.image_size):
            warn(photo_warning(printable(path), image))
        for row in file_rows:
            if row.error:
                warn(f"{row.image}: {row.error}")
        all_rows += file_rows
        batch.add(path, image, file_rows, crops)
    batch.flush()
    return all_rows


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
    # the score and the ten landmark coordinates of a detected face (blank otherwise)
    details = [""] * (1 + len(LANDMARK_COLUMNS)) if row.landmarks is None else [
        f"{row.score:.4f}", *(f"{value:.1f}" for point in row.landmarks for value in point)]
    return [row.image, row.face or "", *box, *details, *ranked, row.error or ""]


class Annotator:
    """`on_image` for `predict_files`: writes each image's annotated copy to its target, counting them
    (and recording them, and the folders made for them, in `created`)."""

    def __init__(self, targets, classes, created):
        self.targets, self.classes, self.created, self.written = targets, classes, created, 0

    def __call__(self, path, image, rows):
        target = self.targets[path]
        drawn = annotate(image, rows, self.classes)
        image_format = _image_format(target)
        options = {"quality": 92} if image_format == "JPEG" else {}
        write_output(target, "--annotate", lambda handle: drawn.save(handle, format=image_format, **options),
                     mode="wb", created=self.created)
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


def input_files(args):
    """The images and folders to classify (a video is `video.py`'s)."""
    if args.every is not None:
        raise ToolError("--every applies to --video")
    if not args.inputs:
        raise ToolError("give the images or folders to classify (or --video FILE)")
    return expand_inputs(args.inputs, keep_special=True)


def run(args):
    """The `predict` command on images; returns the exit status (1 when nothing could be classified,
    130 when interrupted: the rows classified so far are written to --csv/--json, marked partial).

    The outputs are claimed first and written before anything is printed; a failure removes
    everything the run created."""
    with CreatedPaths() as created:
        files, setup = set_up(args, lambda: input_files(args), created)
        return classify_and_report(args, files, setup)


def classify_and_report(args, files, setup):
    trained = setup.trained
    annotator = Annotator(setup.targets, trained.classes, setup.created) if setup.targets else None
    rows = []
    try:
        predict_files(trained, files, setup.device, args.batch_size, finder=setup.finder, on_image=annotator,
                      warn_photos=args.detect is None and setup.finder is None, rows=rows)
    except KeyboardInterrupt:
        return interrupted(args, rows, setup, len(files))
    written = write_outputs(args, rows, setup, lambda: csv_rows(rows, trained.classes, setup.k))
    setup.created.keep()
    for row in rows:
        if not row.error:
            print(format_row(row, trained.classes, setup.k))
    print(f"{summary(rows, setup.finder is not None)} ({count(len(files), 'file')}; {trained.size} model, "
          f"{trained.image_size}px input, {setup.where})")
    if annotator is not None:
        print(f"wrote {count(annotator.written, 'annotated image')} to {args.annotate}")
    for path in written:
        print(f"wrote {printable(path)}")
    return 0 if any(not row.error for row in rows) else 1


def csv_rows(rows, classes, k):
    """The --csv table: its header, then one row per face or file."""
    return [csv_header(k), *(csv_record(row, classes, k) for row in rows)]


def interrupted(args, rows, setup, total):
    """Ctrl-C: keep the rows classified so far (a face waiting for its batch is dropped), exit 130."""
    pending = {row.image for row in rows if not row.error and row.probabilities is None}
    done = [row for row in rows if row.image not in pending]  # the files whose every row is classified
    files_done = len({row.image for row in done})
    partial = f"interrupted after {files_done} of {total} files"
    if not done:
        setup.created.undo()  # nothing done: the claimed, still empty --csv/--json go again
    if done and (args.csv or args.json):
        for path in write_outputs(args, done, setup, lambda: csv_rows(done, setup.trained.classes, setup.k), partial):
            print(f"wrote {printable(path)}", file=sys.stderr)
        kept = f"; wrote the {count(len(done), 'row')} of those files (partial)"
    else:
        kept = "; nothing written" if args.csv or args.json else ""
    print(f"interrupted: {partial}{kept}", file=sys.stderr)
    return EXIT_INTERRUPTED
