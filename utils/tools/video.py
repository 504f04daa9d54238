"""`predict --video`: the faces of a video's frames, through the same path as photos.

Frames are read with PyAV (the extra of `requirements-video.txt`) and turned upright by the
stream's display rotation; every `--every`-th frame goes through detection, alignment and the
model like a photo. `--csv` gets one row per analysed frame and face (a `no face detected` row for
a frame without one), `--json` the same records. `--annotate DIR` gets a copy of the video with
every frame: the analysed ones drawn with their results, the frames between them with the latest
results (H.264 in MP4, written to a temporary file that replaces the target at the end).
"""
import contextlib
import sys
from collections import Counter
from fractions import Fraction
from pathlib import Path

from tqdm import tqdm

from data_preprocessing.outputs import CreatedPaths, printable

from . import ToolError, faces
from .classify import (
    NO_FACE,
    PendingBatch,
    annotate,
    face_rows,
    is_photo,
    photo_warning,
    set_up,
    write_output,
    write_outputs,
)

VIDEO_HINT = "pip install -r requirements-video.txt"
FALLBACK_RATE = Fraction(25)  # frames per second of a stream that declares none
CODECS = ("libx264", "h264", "mpeg4")  # the first one this PyAV build can encode


def _av():
    try:
        import av
    except ImportError:
        raise faces.MissingExtra(f"--video needs PyAV, which is not installed; install it with: {VIDEO_HINT}") from None
    return av


def video_input(args):
    """`[the --video file]`, checked before any work (no other inputs, PyAV installed, the file there,
    a regular file)."""
    if args.inputs:
        raise ToolError("--video takes no image or folder arguments; classify those in a separate run")
    _av()
    path = Path(args.video)
    if not path.exists():
        raise ToolError(f"--video {printable(path)}: no such file")
    if not path.is_file():  # a named pipe would block the reader
        raise ToolError(f"--video {printable(path)}: not a regular file")
    return [path]


# ------------------------------------------------------------------------------ reading

@contextlib.contextmanager
def open_video(path):
    """The PyAV container of a video file with at least one video stream; ToolError otherwise."""
    av = _av()
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError) as error:
        raise ToolError(f"--video {path}: cannot read it as a video ({error})") from None
    with container:
        if not container.streams.video:
            raise ToolError(f"--video {path}: holds no video stream")
        yield container


def frame_rate(stream):
    """Frames per second of a video stream (its average, else its guessed rate, else 25)."""
    return stream.average_rate or stream.guessed_rate or FALLBACK_RATE


def upright_frames(container, path):
    """`(index, seconds from the first frame, upright RGB image)` of every frame of the first video stream."""
    av = _av()
    stream = container.streams.video[0]
    rate, start, index = frame_rate(stream), None, 0
    try:
        for index, frame in enumerate(container.decode(stream)):
            image = frame.to_image()
            if frame.rotation:  # the display matrix's counterclockwise angle; PIL's rotate is counterclockwise too
                image = image.rotate(frame.rotation, expand=True)
            time = frame.time if frame.time is not None else index / rate
            start = time if start is None else start
            yield index, time - start, image
    except av.FFmpegError as error:
        raise ToolError(f"--video {path}: decoding failed at frame {index} ({error})") from None


# ------------------------------------------------------------------------------ writing

class VideoWriter:
    """Encodes RGB frames as an MP4 into an open binary file, at a constant `rate`."""

    def __init__(self, handle, rate):
        self.av = _av()
        self.container = self.av.open(handle, mode="w", format="mp4")
        self.rate, self.stream, self.frames = rate, None, 0

    def write(self, image):
        if self.stream is None:  # the first frame sets the stream's size
            codec = next(name for name in CODECS if name in self.av.codecs_available)
            self.stream = self.container.add_stream(codec, rate=self.rate)
            self.size = tuple(side + side % 2 for side in image.size)
            self.stream.width, self.stream.height = self.size
            self.stream.pix_fmt = "yuv420p"
        if image.size != self.size:  # yuv420p needs even sides: pad the last row/column (black)
            image = image.crop((0, 0, *self.size))
        self.container.mux(self.stream.encode(self.av.VideoFrame.from_image(image)))
        self.frames += 1

    def close(self):
        if self.stream is not None:
            self.container.mux(self.stream.encode(None))  # the frames the encoder still holds
        self.container.close()


# ------------------------------------------------------------------------------ the command

def run(args):
    """`predict --video`: returns the exit status (1 when no face was classified). The outputs are
    claimed first and written before anything is printed; a failure removes what the run created."""
    every = 1 if args.every is None else args.every
    with CreatedPaths() as created:
        files, setup = set_up(args, lambda: video_input(args), created, ".mp4")
        return analyse_and_report(args, files, setup, every)


def analyse_and_report(args, files, setup, every):
    trained, device, finder, targets = setup.trained, setup.device, setup.finder, setup.targets
    path = files[0]
    target = targets.get(path)
    warn_photos = args.detect is None and finder is None  # detection is off for want of the extra
    if target is None:
        rows, counts = analyse(path, trained, device, finder, every, warn_photos=warn_photos)
    else:
        result = {}
        write_output(target, "--annotate", lambda handle: result.update(
            analysed=analyse(path, trained, device, finder, every, handle, warn_photos)),
                     mode="wb", created=setup.created)
        rows, counts = result["analysed"]
    written = write_outputs(args, rows, setup,
                            lambda: [csv_header(trained.classes), *(csv_record(row, trained.classes) for row in rows)])
    setup.created.keep()
    for line in report(path, rows, counts, every, trained.classes):
        print(line)
    for output in written:
        print(f"wrote {output}")
    if target is not None:
        print(f"wrote {target} ({counts['written']} frames)")
    return 0 if any(not row.error for row in rows) else 1


def analyse(path, trained, device, finder, every, handle=None, warn_photos=False):
    """`(rows, counts)` of the video's analysed frames; with `handle`, the annotated copy is encoded into it.

    `warn_photos`: say so when the frames are much larger than a face crop (and classified whole).
    """
    batch = PendingBatch(trained.model, trained.transform(), device, batch_size=1)
    rows, latest = [], []
    counts = Counter()
    with open_video(path) as container:
        stream = container.streams.video[0]
        writer = VideoWriter(handle, frame_rate(stream)) if handle is not None else None
        frames = tqdm(upright_frames(container, path), total=stream.frames or None, unit="frame",
                      desc=path.name, disable=not sys.stderr.isatty(), leave=False)
        for index, time, image in frames:
            counts["frames"] += 1
            if warn_photos and index == 0 and is_photo(image, trained.image_size):
                print(f"warning: {photo_warning(path, image)}", file=sys.stderr)
            if index % every == 0:
                latest, crops = face_rows(image, str(path), finder, frame=index, time=round(time, 4))
                batch.add(index, image, latest, crops)  # a batch of one: classified as they are added
                rows += latest
                counts["analysed"] += 1
            if writer is not None:
                writer.write(annotate(image, latest, trained.classes))
        if writer is not None:
            writer.close()
            counts["written"] = writer.frames
        counts["rate"] = frame_rate(stream)
    return rows, counts


def report(path, rows, counts, every, classes):
    """Terminal lines: frames, faces, frames without a face and how often each label came first."""
    faces_found = [row for row in rows if not row.error]
    without = sum(1 for row in rows if row.error == NO_FACE)
    rate = counts["rate"]
    lines = [f"{path}: {counts['frames']} frames ({counts['frames'] / float(rate):.1f} s at {float(rate):.3g} fps), "
             f"{counts['analysed']} analysed" + (f" (one frame in {every})" if every > 1 else "")
             + f": {len(faces_found)} faces classified, {without} frames without a face"]
    labels = Counter(row.top(classes, 1)[0][0] for row in faces_found)
    if labels:
        lines.append("top labels: " + ", ".join(f"{name} {count}" for name, count in labels.most_common()))
    return lines


def csv_header(classes):
    return ["frame", "time", "face", "box_x", "box_y", "box_w", "box_h", "score", "label", "probability",
            *(f"prob_{name}" for name in classes), "error"]


def csv_record(row, classes):
    box = list(row.box) if row.box else ["", "", "", ""]
    score = "" if row.score is None else f"{row.score:.4f}"
    if row.error:
        return [row.frame, f"{row.time:.4f}", "", *box, score, "", "", *([""] * len(classes)), row.error]
    label, probability = row.top(classes, 1)[0]
    return [row.frame, f"{row.time:.4f}", row.face or "", *box, score, label, f"{probability:.6f}",
            *(f"{p:.6f}" for p in row.probabilities), ""]
