"""Speed of the training step, inference and group sampling; it prints figures and judges none.

    python -m utils.tools.benchmark [--arch base dcs qcs] [--size paper] [--batch 4]
        [--device auto|cpu|cuda] [--amp] [--compile] [--channels-last] [--checkpoint-backbone]
        [--repeats 3] [--warmup 1] [--parts train inference cost sampling memory augment] [--fit-batch 24]
        [--augment-batches 8] [--inference-batches 1 32] [--inference-variants fp32 bf16+cl ...]
        [--parts webcam --webcam-face FACE.jpg [--webcam-frames 40] [--webcam-detect-pixels 76800]]

- train: anchors/s of a full SAM step (`utils.engine.sam_step`: two forward+backward passes and
  the Adam step) with the branches of a group batched through the base network, and, for DCS/QCS,
  with one base-network call per branch (`CrossModel.forward_per_branch`), timed alternately on
  the same weights, plus the largest difference of their first-pass losses; epoch-time
  estimates from the batched rate.
- inference: ms/image of the inference model (the base branch) at --inference-batches (1 and 32),
  float32 eager as released against the fast path (bf16 autocast + channels_last, eager and
  torch.compile'd) and the ONNX export in onnxruntime, with each one's speed-up and how far its
  logits are from float32's.
- cost: parameters and inference GFLOPs.
- sampling: QCS groups/s drawn from an AffectNet-sized label list.
- memory (CUDA only): peak memory of a QCS training step at --fit-batch.
- augment: the training data of each released recipe's train transform on a 100x100 JPEG (RAF-DB's
  size): a worker's ms/image (one thread, as in a DataLoader worker: decode, transform and collating
  batches of 24) for the released PIL pipeline and for the worker part of `--device-augment` (decode
  and geometric steps, uint8), their ratio, and the ms/image of `--device-augment`'s photometric part
  on --device (batches of 24).
- webcam (needs --webcam-face and the face-detection extra): the `demo` page's webcam path on a
  640x480 JPEG frame holding that face at 200 px, with the base branch of --size (random weights,
  the fast path with --amp/--channels-last/--compile): per-frame ms of JPEG decoding, detection,
  the model and drawing the result on the frame (as `predict --video --annotate` does; the page
  draws on a canvas instead), then frames/s one frame at a time and with two in flight, as the page
  sends them (one frame detected while the other is classified).

Timings are medians over --repeats samples after --warmup untimed runs; compared runs alternate
(A B, B A, ...) so that load from other processes hits them alike.
"""
import argparse
import os
import sys

import torch

from models import ARCHS, MODEL_SIZES

from ..device import DeviceUnavailable, resolve_device
from ..inference import DEFAULT_IMAGE_SIZE
from ..settings import BY_NAME, add_option
from .bench_data import AUGMENT_BATCH, JPEG_SIDE, augment_rows, sampling_rows
from .bench_model import INFERENCE_VARIANTS, cost_rows, epoch_estimates, inference_rows, memory_row, train_row
from .bench_webcam import WEBCAM_FACE_SIDE, WEBCAM_FRAME, webcam_rows
from .faces import MAX_DETECTION_PIXELS

PARTS = ("train", "inference", "cost", "sampling", "memory", "augment", "webcam")


def table(headers, rows):
    """A fixed-width text table."""
    cells = [[str(h) for h in headers]] + [[f"{v:.4g}" if isinstance(v, float) else str(v) for v in row]
                                           for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells)


def setup_line(args):
    device = torch.cuda.get_device_name(args.device) if args.device.type == "cuda" else "CPU"
    return (f"torch {torch.__version__}, {device}, {torch.get_num_threads()} threads, load average "
            f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}; size {args.size}, batch {args.batch}, "
            f"amp {args.amp}, compile {args.compile}, channels_last {args.channels_last}, "
            f"checkpoint_backbone {args.checkpoint_backbone}")


def run(args, emit=print):
    """Run the chosen parts, print their tables through `emit` and return the results."""
    results = {}
    emit(setup_line(args))
    if "train" in args.parts:
        rows = results["train"] = [train_row(arch, args) for arch in args.arch]
        headers = ["arch", "batch", "batched s/step", "batched anchors/s", "per-branch s/step",
                   "per-branch anchors/s", "speedup", "loss_max_abs_diff"]
        emit("\nTraining step (SAM: two forward+backward passes, Adam)\n"
             + table(headers, [[r.get(h, "-") for h in headers] for r in rows]))
        estimates = results["epochs"] = epoch_estimates(rows)
        if estimates:
            emit("\nEpoch time at the batched rate\n" + table(
                ["arch", "dataset", "anchors", "epoch s", "recipe epochs", "recipe h"],
                [[e["arch"], e["dataset"], e["anchors"], e["epoch_s"], e["epochs"], e["recipe_s"] / 3600]
                 for e in estimates]))
    if "inference" in args.parts:
        rows = results["inference"] = inference_rows(args)
        emit(f"\nInference (base branch, {args.size} size), each variant against float32 eager on the same "
             "images\n" + table(
                 ["variant", "batch", "ms/image", "images/s", "speed-up vs fp32", "max |logit diff|", "top-1 agree"],
                 [[r["variant"], r["batch"], r["ms_per_image"], r["images_per_s"], r["speedup"], r["max_abs_diff"],
                   r["top1_agreement"]] for r in rows]))
    if "cost" in args.parts:
        rows = results["cost"] = cost_rows(args)
        emit("\nCost\n" + table(["arch", "inference params M", "cross params M", "GFLOPs/image"],
                                [[r["arch"], r["base_params"] / 1e6, r["cross_params"] / 1e6,
                                  r["inference_gflops"]] for r in rows]))
    if "sampling" in args.parts:
        rows = results["sampling"] = sampling_rows(args.repeats)
        emit("\nQCS group sampling, AffectNet-8-sized labels\n" + table(
            ["anchors", "negatives", "groups", "groups/s"],
            [[r["anchors"], r["negatives"], r["groups"], r["groups_per_s"]] for r in rows]))
    if "memory" in args.parts:
        row = results["memory"] = memory_row(args)
        emit("\nPeak memory: " + ("skipped: needs CUDA" if row is None else
                                 f"QCS batch {row['batch']}: {row['peak_gib']:.2f} GiB"))
    if "augment" in args.parts:
        rows = results["augment"] = augment_rows(args)
        emit(f"\nTraining data, {JPEG_SIDE}x{JPEG_SIDE} JPEG to {DEFAULT_IMAGE_SIZE} px: a worker's ms/image "
             "(1 thread: decode, transform, collate), released PIL pipeline vs --device-augment's worker part; its "
             f"photometric part on {args.device.type} (batches of {AUGMENT_BATCH})\n" + table(
                 ["transform", "released ms/img", "split worker ms/img", "worker ratio", "device ms/img",
                  "released / (worker + device)", "recipes"],
                 [[r["transform"], r["released_ms"], r["worker_ms"], r["worker_ratio"], r["device_ms"],
                   r["total_ratio"], r["recipes"]] for r in rows]))
    if "webcam" in args.parts:
        rows = results["webcam"] = webcam_rows(args)
        emit(f"\nWebcam path of `demo`: {WEBCAM_FRAME[0]}x{WEBCAM_FRAME[1]} JPEG frames, one face, base branch "
             f"({args.size}), detection searching at most {args.webcam_detect_pixels} pixels; per-stage medians\n"
             + ("skipped: needs --webcam-face and the face-detection extra (requirements-faces.txt)" if rows is None
                else table(
                    ["in flight", "frames", "frames/s", "faces/frame", "decode ms", "detect ms", "model ms", "draw ms"],
                    [[r["in_flight"], r["frames"], r["fps"], r["faces"], r["decode_ms"], r["detect_ms"], r["model_ms"],
                      r["draw_ms"]] for r in rows])))
    return results


def positive(value):
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return number


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m utils.tools.benchmark", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--arch", nargs="+", default=list(ARCHS), choices=list(ARCHS))
    parser.add_argument("--size", default="paper", choices=list(MODEL_SIZES))
    parser.add_argument("--batch", type=positive, default=4, help="anchors per training step")
    add_option(parser, BY_NAME["device"])
    parser.add_argument("--amp", action="store_true", help="bf16 autocast")
    parser.add_argument("--compile", action="store_true", help="torch.compile the batched model")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--checkpoint-backbone", action="store_true")
    parser.add_argument("--repeats", type=positive, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--parts", nargs="+", default=[part for part in PARTS if part != "webcam"], choices=PARTS,
                        help="sections to run (default: all but webcam, which needs --webcam-face)")
    parser.add_argument("--fit-batch", type=positive, default=24, help="batch of the memory part")
    parser.add_argument("--inference-batches", nargs="+", type=positive, default=[1, 32],
                        help="batches of the inference part")
    parser.add_argument("--inference-variants", nargs="+", default=list(INFERENCE_VARIANTS),
                        choices=INFERENCE_VARIANTS,
                        help="inference variants (onnxruntime needs requirements-onnx.txt; compiling takes minutes "
                             "at the paper size)")
    parser.add_argument("--augment-batches", type=positive, default=8,
                        help="batches of 24 images per timing sample of the augment part's workers")
    parser.add_argument("--webcam-face", metavar="IMAGE", help="webcam part: a face photo or crop (pasted at "
                        f"{WEBCAM_FACE_SIDE} px on the {WEBCAM_FRAME[0]}x{WEBCAM_FRAME[1]} frame)")
    parser.add_argument("--webcam-frames", type=positive, default=40, help="frames per webcam measurement")
    parser.add_argument("--webcam-detect-pixels", type=positive, default=MAX_DETECTION_PIXELS,
                        help="webcam part: frames larger than this are searched for faces shrunk (demo's "
                             "--detect-pixels; default: as predict)")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        args.device = resolve_device(args.device)
    except DeviceUnavailable as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
