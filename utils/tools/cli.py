"""Tools around a trained model: `python -m utils.tools {predict,heatmaps,export,inspect} ...`.

- predict:  top-k expressions of the faces in photos and videos (or of face crops, --no-detect)
- heatmaps: CSA weight maps of a group of images and a class-by-class grid (paper Fig. 5/7)
- export:   the inference network as TorchScript / torch.export / ONNX / safetensors, with a JSON
- inspect:  what a checkpoint or exported file holds, and its SHA-256, without building a model
- demo:     a local web page classifying the faces of photos and of the webcam, live

Each accepts this project's checkpoints and the authors' released ones; predict also an ONNX
export (--onnx), predict and inspect a safetensors one.
"""
import argparse
import importlib
import json
import os
import sys
from pathlib import Path

from data_preprocessing.files import describe_os_error
from data_preprocessing.outputs import OutputError
from models.architectures import is_cross

from ..settings import (
    BY_NAME,
    DATASET_NAMES,
    DEFAULT_IMAGE_SIZE,
    EXPORT_INFO_FILE,
    MAX_IMAGE_SIDE,
    MAX_SEED,
    MIN_IMAGE_SIDE,
    DefaultsOnceFormatter,
    UsageError,
    add_option,
    check_options,
    flag,
)
from . import ToolError
from .faces import DEFAULT_MIN_SCORE, DETECTOR_WINDOW, LARGEST_SCORE_SHARE, MAX_DETECTION_PIXELS
from .formats import FORMAT_CHOICES, OPSET

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT
AT_LEAST_ONE = ("top_k", "detect_pixels", "every", "samples_per_class")  # options counting something


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m utils.tools", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n")[1])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add_command in (_add_predict, _add_heatmaps, _add_export, _add_inspect, _add_demo):
        add_command(commands)
    return parser


def _model_command(commands, name, summary, description, class_names=True, onnx=False, exports=True):
    """A subcommand that loads a checkpoint (or with `onnx` an ONNX export): --checkpoint (or exactly
    one of --checkpoint and --onnx), --size, --image-size and, with `class_names`, the class-name
    options; `exports`: whether --checkpoint also takes a .safetensors export."""
    parser = commands.add_parser(name, help=summary, description=description,
                                 formatter_class=DefaultsOnceFormatter)
    source = parser.add_mutually_exclusive_group(required=True) if onnx else parser
    source.add_argument("--checkpoint", required=not onnx,
                        help="ours (.pth from main_*.py) or the authors'" + (
                            f", or a .safetensors export (with its {EXPORT_INFO_FILE} beside it)" if exports else ""))
    if onnx:
        source.add_argument("--onnx", metavar="FILE.onnx", type=Path,
                            help=f"an ONNX export (export --format onnx), run with onnxruntime; the {EXPORT_INFO_FILE} "
                                 "beside it gives the classes and preprocessing (needs requirements-onnx.txt)")
    parser.add_argument("--size", choices=BY_NAME["size"].choices,
                        help="model size (default: from the checkpoint)")
    parser.add_argument("--image-size", type=int,
                        help=f"input side in pixels, {MIN_IMAGE_SIDE}..{MAX_IMAGE_SIDE} (default: from the checkpoint, "
                             f"else {DEFAULT_IMAGE_SIZE})")
    if class_names:
        names = parser.add_mutually_exclusive_group()
        names.add_argument("--dataset", choices=DATASET_NAMES,
                           help="class names of this dataset (needed unless the checkpoint records them)")
        names.add_argument("--classes", help="class names in label order, comma-separated")
        parser.add_argument("--data-root",
                            help="with --dataset folder: the folder whose class folders name the classes")
    return parser


def _detection_options(parser):
    """--detect/--no-detect and the detector's options (predict, heatmaps --images)."""
    parser.add_argument("--detect", action=argparse.BooleanOptionalAction,
                        help="find, align and classify each face first (default: on when the extra of "
                             "requirements-faces.txt is installed); --no-detect for images that are face crops")
    parser.add_argument("--min-score", type=float,
                        help=f"detector score threshold (default {DEFAULT_MIN_SCORE:g}: drops dlib's near-zero "
                             "detections, keeps 93%% of FER2013 faces pasted on large canvases and all clearer "
                             "ones; lower: more, weaker faces)")
    parser.add_argument("--largest", action="store_true",
                        help=f"only the largest face of each image, among those scoring at least "
                             f"{LARGEST_SCORE_SHARE:g} × the best score")
    parser.add_argument("--upsample", type=int,
                        help=f"double the image this many times before detecting (default 0: faces of "
                             f"{DETECTOR_WINDOW} px and up; 1: {DETECTOR_WINDOW // 2} px, 4× slower); images over "
                             f"{MAX_DETECTION_PIXELS // 10 ** 6} megapixels after it are searched shrunk")


def _detect_pixels_option(parser, what, default):
    parser.add_argument("--detect-pixels", type=int, metavar="N",
                        help=f"search {what} for faces shrunk to at most N pixels (76800: 320x240, about 3x "
                             f"faster, faces of 160 px and up in a 640x480 frame; default: {default})")


def _classification_options(parser):
    """What `predict` and `demo` share after their own options: the device, the fast path of a
    PyTorch model (also `--evaluate`'s options: on a CPU with bf16 support, `--amp --channels-last
    --compile` is about 2.3× (one image) to 4× (batches) faster), flip test-time augmentation and
    face detection."""
    add_option(parser, BY_NAME["device"])
    parser.add_argument("--amp", action="store_true",
                        help="bf16 autocast (CPU or CUDA): faster, logits differ slightly from float32")
    parser.add_argument("--channels-last", action="store_true", help="channels_last memory format")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (slow first batch)")
    add_option(parser, BY_NAME["tta"], help="flip: score each face by the mean of its logits and its mirror's")
    _detection_options(parser)


def _add_predict(commands):
    p = _model_command(commands, "predict", "top-k expressions of the faces in photos and videos",
                       "Classify faces with the base branch: each face found in the photos (EXIF "
                       "orientation applied, aligned like the training crops), or each image as a face "
                       "crop with --no-detect. Folders are searched recursively; unreadable and "
                       "non-image files are reported and skipped.", onnx=True)
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=32)
    _classification_options(p)
    _detect_pixels_option(p, "images and video frames", "the image's own size")
    p.add_argument("--annotate", metavar="DIR",
                   help="write copies of the images (or of the video) with boxes, landmarks and labels drawn")
    p.add_argument("--video", metavar="FILE", help="classify the faces of a video's frames (needs the extra of "
                                                   "requirements-video.txt); --csv gets one row per frame and face")
    p.add_argument("--every", type=int, help="with --video: analyse every N-th frame (default 1: all)")
    p.add_argument("--csv", metavar="OUT.csv",
                   help="write one row per face/image (a new file in an existing folder; file names that are not "
                        "UTF-8 are written with their odd bytes as \\xNN; after Ctrl-C it holds the files done so far)")
    p.add_argument("--json", metavar="OUT.json",
                   help="write all probabilities as JSON (a new file in an existing folder; names as in --csv; "
                        "\"partial\" says why it holds only some files after Ctrl-C)")
    p.add_argument("inputs", nargs="*", metavar="IMAGE_OR_FOLDER")


def _add_heatmaps(commands):
    p = _model_command(commands, "heatmaps", "CSA weight maps of a DCS/QCS model (paper Fig. 5/7)",
                       "Render the cross similarity attention weights of an anchor and its partners at "
                       "the 3 feature levels and fused, and optionally a class-by-class grid of fused "
                       "anchor maps.", class_names=False, exports=False)
    p.add_argument("--dataset", choices=DATASET_NAMES, help="the split the group is drawn from (or use --images)")
    p.add_argument("--images", nargs="+", metavar="IMAGE",
                   help="the group from these files instead: their first faces in order (anchor, positive[, "
                        "negative, negative2]), found and aligned as predict does, or the files as face crops "
                        "(--no-detect)")
    _detection_options(p)
    p.add_argument("--data-root", help="dataset folder (default: the dataset's usual ./datas/... folder)")
    p.add_argument("--split", default="test")
    p.add_argument("--anchor", type=int, help="index of the anchor in the split (default: drawn with --seed)")
    p.add_argument("--seed", type=int, default=0, help=f"draws the anchor, partners and grid samples (0..{MAX_SEED})")
    p.add_argument("--out", default="csa_heatmaps.png", help="PNG of the group (its folder is created)")
    p.add_argument("--class-grid", metavar="OUT_GRID.png",
                   help="also write the K×K class-pair grid (a path other than --out)")
    p.add_argument("--samples-per-class", type=int, default=4, help="pairs averaged per grid cell")
    add_option(p, BY_NAME["device"])
    p.add_argument("--amp", action="store_true", help="bf16 autocast (CPU or CUDA): faster, maps differ slightly")
    p.add_argument("--overwrite", action="store_true", help="replace existing PNGs")


def _add_export(commands):
    p = _model_command(commands, "export", "inference network as TorchScript / torch.export / ONNX / safetensors",
                       "Export the base branch, reload every artifact and check it gives the "
                       "checkpoint's logits (ONNX: run with onnxruntime, within 1e-4 of the largest |logit|).")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created if needed)")
    p.add_argument("--format", nargs="+", default=["both"], choices=FORMAT_CHOICES, metavar="FORMAT",
                   help="one or more of: torchscript, export (torch.export program), onnx (dynamo exporter, "
                        f"opset {OPSET}, dynamic batch; needs requirements-onnx.txt), safetensors (weights; "
                        "needs requirements-safetensors.txt), both (torchscript and export), all (default: both)")
    p.add_argument("--check-images", nargs="+", metavar="IMAGE_OR_FOLDER",
                   help="face crops the check also runs on (the first 32 image files, folders searched "
                        "recursively), besides 3 random inputs")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the files of an earlier export in DIR; its model files of formats not "
                        "written this time are removed, so DIR holds exactly what model_info.json lists "
                        "(refused when --checkpoint is one of those files: export it into another folder)")


def _add_inspect(commands):
    p = commands.add_parser("inspect", help="what a checkpoint or export holds (no model is built)",
                            formatter_class=DefaultsOnceFormatter,
                            description="Print the format, architecture, classes, training state, "
                                        "tensor counts and SHA-256 of a checkpoint, or of an export's "
                                        ".safetensors / .onnx file (with its model_info.json beside it).")
    p.add_argument("checkpoint", metavar="FILE")
    p.add_argument("--json", action="store_true", help="print the description as JSON")


def _add_demo(commands):
    p = _model_command(commands, "demo", "a local web page: faces of photos and of the webcam, live",
                       "Serve a page (standard library only, nothing fetched from the internet) that "
                       "classifies the faces of an uploaded photo or of the browser's webcam as predict "
                       "does, and shows the CSA maps of two faces (DCS/QCS checkpoints).", onnx=True)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every network)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--top-k", type=int, default=3)
    _classification_options(p)
    _detect_pixels_option(p, "webcam frames", "the full frame, as predict")


# ------------------------------------------------------------------------------ inspect

def describe_lines(info):
    """Human-readable lines describing a CheckpointInfo, one per field (those not known left out)."""
    config = info.model_config or {}
    if info.format in ("safetensors", "onnx"):
        source = config.get("source_arch")
        arch = "BASE (the inference network" + (f" of a {source.upper()} model" if source else "") + ", exported)"
    elif info.arch is not None:
        arch = info.arch.upper() + (" (base branch + cross module)" if is_cross(info.arch)
                                    else " (the base branch alone: a baseline)")
    else:
        arch = None
    fields = [
        ("file", info.path),
        ("format", info.format_title),
        ("arch", arch),
        ("model size", info.size or "unknown (shapes match no preset)"),
        ("options", ", ".join(f"{k}={config[k]}" for k in ("attention", "matrix", "connection", "cross_block")
                              if k in config) if config and is_cross(info.arch) else None),
        ("classes", None if info.num_classes is None else f"{info.num_classes}" + (
            f": {', '.join(info.classes)}" if info.classes else " (names not recorded)")),
        ("dataset", None if info.dataset is None else f"{info.dataset}" + (
            f", {info.image_size}px" if info.image_size else "") + (
            f", train augmentation {info.augmentation}" if info.augmentation else "")),
        ("epoch", info.epoch),
        ("best acc", None if info.best_acc is None else f"{info.best_acc:.2f}%" + (
            f" (epoch {info.best_epoch})" if info.best_epoch is not None else "")),
        ("tensors", f"{info.num_tensors}" + (
            f" ({info.unused_tensors} unused by this project)" if info.unused_tensors else "")),
        ("parameters", f"{info.num_parameters:,} (BatchNorm running statistics excluded)"),
        ("stored as", f"{', '.join(info.weight_dtypes)} (loading computes in float32)"
         if any(dtype != "float32" for dtype in info.weight_dtypes) else None),
        ("foreign pickled objects", f"{', '.join(info.foreign_objects)} (read as inert stand-ins; plain "
                                    "torch.load cannot unpickle them)" if info.foreign_objects else None),
    ]
    return [f"{label + ':':<12} {value}" for label, value in fields if value is not None]


def run_inspect(args):
    from ..checkpoint import load_checkpoint
    from .export import sha256_of
    path = Path(args.checkpoint)
    if path.suffix.lower() == ".onnx":
        from . import onnx_model
        info, extra = onnx_model.describe(path)
    else:
        (_, info), extra = load_checkpoint(path), []
    digest = sha256_of(path)
    verdict = listed_sha256_verdict(path, info, digest)
    if args.json:
        print(json.dumps({**info.as_dict(), "sha256": digest, "sha256_in_model_info": verdict},
                         indent=2, default=str))
    else:
        note = {True: f" (as listed in {EXPORT_INFO_FILE})", None: "",
                False: f" (differs from the one {EXPORT_INFO_FILE} lists: not the exported file)"}[verdict]
        print("\n".join([*describe_lines(info), *extra, f"sha256:      {digest}{note}"]))
    return 0


def listed_sha256_verdict(path, info, digest):
    """Whether an export's file has the SHA-256 its model_info.json lists (None: not an export, or none listed)."""
    if info.format not in ("safetensors", "onnx"):
        return None
    from ..model_info import read_model_info
    listed = read_model_info(path).get("sha256", {}).get(path.name)  # a checked mapping of hex digests
    return None if listed is None else listed.lower() == digest


# ------------------------------------------------------------------------------ entry point

def check_shared_options(args):
    """The options shared with a run (`--image-size`, `--batch-size`, ...) checked as the run's,
    and the counts of at least 1 (`--top-k`, `--detect-pixels`, ...), before any work (the seed is
    heatmaps' own)."""
    for name in AT_LEAST_ONE:
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise ToolError(f"{flag(name)} must be at least 1, got {value}")
    side = getattr(args, "image_size", None)
    if side is not None and not MIN_IMAGE_SIDE <= side <= MAX_IMAGE_SIDE:
        raise ToolError(f"--image-size must be {MIN_IMAGE_SIDE}..{MAX_IMAGE_SIDE} pixels, got {side}")
    check_options(args, shared=("batch_size",))


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        check_shared_options(args)
        code = run_command(args)
        sys.stdout.flush()  # a full or closed standard output fails here, not at exit
        return code
    except (ToolError, UsageError, OutputError, FileExistsError) as error:
        return usage_error(error)
    except model_errors() as error:  # evaluated only when the first clause does not match: see model_errors
        return usage_error(error)
    except KeyboardInterrupt:
        print(f"interrupted: {args.command} stopped before it wrote anything", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as error:
        if error.filename is not None or standard_output_works():
            raise
        print(f"error: {describe_os_error(error, 'standard output', doing='printing')}; every output file "
              "was written before it", file=sys.stderr)
        return 1


def usage_error(error):
    """Report an error in what the user gave as one line; the usage exit status."""
    print(f"error: {error}", file=sys.stderr)
    return EXIT_USAGE


def model_errors():
    """The error types of loading a model, imported only when an error is met: PyTorch loads only
    once a command runs, so `--help` and a bad option answer at once."""
    from ..checkpoint import CheckpointError
    from ..device import DeviceUnavailable
    return CheckpointError, DeviceUnavailable


# the module that runs each command (`predict --video`: video), imported only when it runs
COMMAND_MODULES = {"predict": "predict", "heatmaps": "heatmaps", "demo": "webdemo", "export": "export"}


def run_command(args):
    """Run the command `args` names; returns its exit status."""
    if args.command == "inspect":
        return run_inspect(args)
    name = "video" if args.command == "predict" and args.video else COMMAND_MODULES[args.command]
    return importlib.import_module(f".{name}", __package__).run(args)


def standard_output_works():
    """Whether standard output takes a line (a blank one); when not (a full device, a closed pipe), it
    is pointed at the null device, so that exiting does not fail on it again."""
    try:
        print(flush=True)
        return True
    except OSError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return False


if __name__ == "__main__":
    sys.exit(main())
