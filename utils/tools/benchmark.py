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
import copy
import io
import os
import statistics
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import default_collate

from data_preprocessing import GroupSampler, ImageListDataset, train_transform
from data_preprocessing.device_augment import split_train_transform
from models import ARCHS, MODEL_SIZES, build_model, group_loss, inference_model
from models.summary import model_summary

from ..device import (
    DEVICE_CHOICES,
    DeviceUnavailable,
    TestTimeModel,
    fast_path,
    place_model,
    resolve_device,
    to_device,
)
from ..engine import model_outputs, sam_step
from ..inference import DEFAULT_IMAGE_SIZE, TrainedModel
from ..recipes import RELEASED, recipe
from ..sam import SAM
from .faces import MAX_DETECTION_PIXELS

PARTS = ("train", "inference", "cost", "sampling", "memory", "augment", "webcam")
WEBCAM_FRAME, WEBCAM_FACE_SIDE = (640, 480), 200
# Anchors per epoch: RAF-DB basic, FERPlus after the majority vote (about), AffectNet-8 balanced.
EPOCH_ANCHORS = {"RAF-DB": 12271, "FERPlus": 28500, "AffectNet-8": 287651}
AFFECTNET_COUNTS = (74874, 134415, 25459, 14090, 6378, 3803, 24882, 3750)  # AffectNet-8 train
JPEG_SIDE = 100  # RAF-DB's aligned faces
AUGMENT_BATCH = 24  # images per collated batch and photometric call: a QCS branch at the released batch size


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def alternating_times(runs, repeats, warmup, device):
    """`{name: [seconds, ...]}` of each callable, timed in alternating order after a warm-up."""
    for run in runs.values():
        for _ in range(warmup):
            run()
    times = {name: [] for name in runs}
    names = list(runs)
    for round_index in range(repeats):
        for name in names if round_index % 2 == 0 else names[::-1]:
            synchronize(device)
            start = time.perf_counter()
            runs[name]()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return times


def make_group(arch, batch, size, device, seed=1):
    """Random images of one batch of groups, with labels, for `arch` at model size `size`.

    The paper size gets the released input side; the small presets their own internal side.
    """
    generator = torch.Generator().manual_seed(seed)
    image_size = DEFAULT_IMAGE_SIZE if size == "paper" else MODEL_SIZES[size]["input_size"]
    images = [torch.randn(batch, 3, image_size, image_size, generator=generator).to(device)
              for _ in range(ARCHS[arch])]
    y = torch.arange(batch, device=device) % 7
    return images, y, (y + 1) % 7


def prepared(model, images, args):
    """The model and images moved to the run's device and memory format."""
    place_model(model, args.device, args.channels_last)
    return model, to_device(images, args.device, args.channels_last)


def first_pass_difference(model, images, y, y_n):
    """Largest |difference| of the loss and each output's cross-entropy, batched vs per branch."""
    with torch.no_grad():
        losses = [torch.cat([loss.reshape(1), per_output]) for loss, per_output in
                  (group_loss(model_outputs(m, images), y, y_n) for m in (model, model.forward_per_branch))]
    return (losses[0] - losses[1]).abs().max().item()


def train_row(arch, args):
    torch.manual_seed(0)
    model = build_model(arch, 7, size=args.size, checkpoint_backbone=args.checkpoint_backbone)
    images, y, y_n = make_group(arch, args.batch, args.size, args.device)
    model, images = prepared(model.train(), images, args)
    optimizer = SAM(model.parameters(), torch.optim.Adam, rho=0.05, lr=3e-6)
    runs = {"batched": torch.compile(model) if args.compile else model}
    row = dict(arch=arch, batch=args.batch)
    if arch != "base":
        runs["per-branch"] = model.forward_per_branch
        row["loss_max_abs_diff"] = first_pass_difference(model, images, y, y_n)
    times = alternating_times({name: (lambda m=m: sam_step(m, optimizer, images, y, y_n, amp=args.amp))
                               for name, m in runs.items()}, args.repeats, args.warmup, args.device)
    for name, seconds in times.items():
        row[f"{name} s/step"] = statistics.median(seconds)
        row[f"{name} anchors/s"] = args.batch / statistics.median(seconds)
    if "per-branch s/step" in row:
        row["speedup"] = row["per-branch s/step"] / row["batched s/step"]
    return row


def epoch_estimates(rows):
    """Seconds per epoch and per released recipe at each row's batched rate (DCS/QCS rows)."""
    estimates = []
    for row in rows:
        if row["arch"] == "base":
            continue
        for dataset, anchors in EPOCH_ANCHORS.items():
            settings = recipe(row["arch"], dataset)
            if settings["balanced_sampler"]:
                anchors //= settings["anchor_divisor"]
            epoch_s = anchors / row["batched anchors/s"]
            estimates.append(dict(arch=row["arch"], dataset=dataset, anchors=anchors, epoch_s=epoch_s,
                                  epochs=settings["epochs"], recipe_s=epoch_s * settings["epochs"]))
    return estimates


INFERENCE_VARIANTS = ("fp32", "bf16+cl", "bf16+cl compiled", "onnxruntime")


def inference_variants(model, args, image_size):
    """`{name: callable of a batch}`: the base branch as released (float32 eager), the fast path
    (bf16 autocast + channels_last, eager and compiled) and the ONNX export in onnxruntime."""
    variants = {}
    for name in args.inference_variants:
        if name == "fp32":
            variants[name] = TestTimeModel(model)
        elif name == "onnxruntime":
            variants[name] = onnx_session(model, image_size)
        else:
            variants[name] = fast_path(copy.deepcopy(model), args.device, amp=True, channels_last=True,
                                       compile=name.endswith("compiled"))
    return {name: run for name, run in variants.items() if run is not None}


def onnx_session(model, image_size):
    """The model exported to ONNX and opened in onnxruntime (None without the extra)."""
    import importlib.util

    if any(importlib.util.find_spec(name) is None for name in ("onnx", "onnxscript", "onnxruntime")):
        return None
    from .onnx_model import OnnxModel, export_onnx

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.onnx"
        export_onnx(model.cpu(), image_size, path)
        return OnnxModel(path)  # the session holds the graph; the file may go


def inference_rows(args):
    """ms/image of each variant at each batch, its speed-up over float32 eager, and how far its
    logits are from float32's (max |difference|, top-1 agreement) on the same random images."""
    torch.manual_seed(0)
    model = inference_model(build_model("qcs", 7, size=args.size)).eval().to(args.device)
    image_size = DEFAULT_IMAGE_SIZE if args.size == "paper" else MODEL_SIZES[args.size]["input_size"]
    variants = inference_variants(model, args, image_size)
    rows = []
    for batch in args.inference_batches:
        images = make_group("base", batch, args.size, args.device)[0][0]
        with torch.inference_mode():
            outputs = {name: run(images).float().cpu() for name, run in variants.items()}
            times = alternating_times({name: (lambda r=run, x=images: r(x)) for name, run in variants.items()},
                                      args.repeats, args.warmup, args.device)
        reference = statistics.median(times["fp32"]) if "fp32" in times else None
        for name, seconds in times.items():
            seconds = statistics.median(seconds)
            rows.append(dict(variant=name, batch=batch, ms_per_image=1000 * seconds / batch,
                             images_per_s=batch / seconds, speedup=reference / seconds if reference else None,
                             max_abs_diff=(outputs[name] - outputs["fp32"]).abs().max().item()
                             if "fp32" in outputs else None,
                             top1_agreement=(outputs[name].argmax(1) == outputs["fp32"].argmax(1)).float().mean().item()
                             if "fp32" in outputs else None))
    return rows


def cost_rows(args):
    return [dict(arch=arch, **model_summary(build_model(arch, 7, size=args.size))) for arch in args.arch]


def sampling_rows(repeats):
    """QCS groups/s on an AffectNet-8-sized, skewed label list, shuffled and class-balanced."""
    labels = np.repeat(np.arange(len(AFFECTNET_COUNTS)), AFFECTNET_COUNTS)
    rows = []
    for balanced, negatives in ((False, "by_sample"), (True, "by_class")):
        sampler = GroupSampler(labels, 4, balanced=balanced, anchor_divisor=12, negatives=negatives)
        seconds = []
        for epoch in range(repeats):
            sampler.set_epoch(epoch)
            start = time.perf_counter()
            groups = sampler.epoch_groups()
            seconds.append(time.perf_counter() - start)
        rows.append(dict(anchors="class-balanced" if balanced else "shuffled", negatives=negatives,
                         groups=len(groups), groups_per_s=len(groups) / statistics.median(seconds)))
    return rows


def memory_row(args):
    if args.device.type != "cuda":
        return None
    model = build_model("qcs", 7, size=args.size, checkpoint_backbone=args.checkpoint_backbone)
    images, y, y_n = make_group("qcs", args.fit_batch, args.size, args.device)
    model, images = prepared(model.train(), images, args)
    optimizer = SAM(model.parameters(), torch.optim.Adam, rho=0.05, lr=3e-6)
    torch.cuda.reset_peak_memory_stats(args.device)
    sam_step(model, optimizer, images, y, y_n, amp=args.amp)
    return dict(batch=args.fit_batch, peak_gib=torch.cuda.max_memory_allocated(args.device) / 2 ** 30)


def recipe_augmentations():
    """`[(label, augmentation, recipes using it)]`: each distinct train transform of the released recipes."""
    found = {}
    for (arch, dataset), row in RELEASED.items():
        key = repr(sorted(row.augmentation.items()))
        found.setdefault(key, (augmentation_label(row.augmentation), row.augmentation, []))[2].append(
            f"{arch.upper()} {dataset}")
    return list(found.values())


def augmentation_label(augmentation):
    """`A`, `A, no jitter`, `B(234, ±10°)`, `B(236, ±12°, erase 0.03-0.1)`."""
    if augmentation.get("kind", "A") == "A":
        return "A" if augmentation.get("color_jitter", True) else "A, no jitter"
    low, high = augmentation.get("erase_scale", (0.02, 0.1))
    erase = "" if (low, high) == (0.02, 0.1) else f", erase {low:g}-{high:g}"
    return f"B({augmentation['resize']}, ±{augmentation['rotation']}°{erase})"


def sample_jpeg(folder):
    """A 100x100 JPEG face-sized test image (smooth colour gradients with noise)."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:JPEG_SIDE, 0:JPEG_SIDE]
    pixels = np.stack([128 + 70 * np.sin(x / (9 + c) + y / (13 - c)) + rng.normal(0, 12, x.shape)
                       for c in range(3)], -1)
    path = Path(folder) / "face.jpg"
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=90)
    return path


@contextmanager
def threads(count):
    """Run the block with `count` torch threads (a DataLoader worker has one)."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def augment_rows(args):
    """Per released train transform: worker ms/image released vs split (alternating), the split's
    photometric part on the device, and the ratios."""
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        path = sample_jpeg(folder)
        for label, augmentation, recipes in recipe_augmentations():
            released = train_transform(**augmentation, image_size=DEFAULT_IMAGE_SIZE)
            worker, photometric = split_train_transform(released)
            row = dict(transform=label, recipes=", ".join(recipes), **worker_ms(path, released, worker, args))
            row["device_ms"] = photometric_ms(photometric, args)
            row["worker_ratio"] = row["released_ms"] / row["worker_ms"]
            row["total_ratio"] = row["released_ms"] / (row["worker_ms"] + row["device_ms"])
            rows.append(row)
    return rows


def worker_ms(path, released, worker, args):
    """ms/image of a worker's job (load `path`, transform, collate batches) for each transform in one
    thread, timed alternately."""
    datasets = {name: ImageListDataset([str(path)], [0], ["face"], transform=tf)
                for name, tf in (("released", released), ("worker", worker))}
    runs = {name: (lambda d=d: [default_collate([d[0] for _ in range(AUGMENT_BATCH)])
                                for _ in range(args.augment_batches)]) for name, d in datasets.items()}
    with threads(1):
        times = alternating_times(runs, args.repeats, args.warmup, torch.device("cpu"))
    images = args.augment_batches * AUGMENT_BATCH
    return {f"{name}_ms": 1000 * statistics.median(seconds) / images for name, seconds in times.items()}


def photometric_ms(photometric, args):
    """ms/image of the photometric part on a uint8 batch already on the device (parameters drawn included)."""
    generator = torch.Generator().manual_seed(0)
    batch = torch.randint(0, 256, (AUGMENT_BATCH, 3, DEFAULT_IMAGE_SIZE, DEFAULT_IMAGE_SIZE),
                          dtype=torch.uint8, generator=generator).to(args.device)
    times = alternating_times({"device": lambda: photometric(batch, generator)}, args.repeats, args.warmup,
                              args.device)
    return 1000 * statistics.median(times["device"]) / AUGMENT_BATCH


def webcam_jpeg(face_path):
    """A 640x480 JPEG, as the page sends a camera frame: gray noise with the face pasted at 200 px in the middle."""
    rng = np.random.default_rng(0)
    frame = Image.fromarray(rng.integers(96, 160, WEBCAM_FRAME[::-1], dtype=np.uint8)).convert("RGB")
    face = Image.open(face_path).convert("RGB").resize((WEBCAM_FACE_SIDE,) * 2, Image.BICUBIC)
    frame.paste(face, ((WEBCAM_FRAME[0] - WEBCAM_FACE_SIDE) // 2, (WEBCAM_FRAME[1] - WEBCAM_FACE_SIDE) // 2))
    buffer = io.BytesIO()
    frame.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def webcam_rows(args):
    """The demo's webcam path (`webdemo.Classifier.frame`): per-stage ms/frame one frame at a time, and
    frames/s with one and with two frames in flight; None without --webcam-face or the face extra."""
    from . import faces
    from .classify import annotate, decode_photo
    from .webdemo import Classifier

    if args.webcam_face is None or not faces.available():
        return None
    torch.manual_seed(0)
    image_size = DEFAULT_IMAGE_SIZE if args.size == "paper" else MODEL_SIZES[args.size]["input_size"]
    model = fast_path(inference_model(build_model("qcs", 7, size=args.size)).eval(), args.device, amp=args.amp,
                      channels_last=args.channels_last, compile=args.compile)
    classes = [f"class {i}" for i in range(7)]
    trained = TrainedModel(model, None, classes, args.size, image_size, {"kind": "A"})
    finder = faces.FaceFinder(side=image_size, max_pixels=args.webcam_detect_pixels)
    classifier = Classifier(trained, args.device, str(args.device), finder, k=3)
    jpeg = webcam_jpeg(args.webcam_face)

    def one_frame():
        start = time.perf_counter()
        image, _ = decode_photo(io.BytesIO(jpeg))
        decoded = time.perf_counter()
        rows, timing = classifier.frame(image)
        drawing = time.perf_counter()
        annotate(image, rows, classes)
        return dict(decode_ms=1000 * (decoded - start), **timing, draw_ms=1000 * (time.perf_counter() - drawing),
                    faces=sum(1 for row in rows if not row.error))

    for _ in range(max(1, args.warmup)):
        one_frame()
    rows = []
    for in_flight in (1, 2):
        frames, start = [], time.perf_counter()
        each = args.webcam_frames // in_flight
        workers = [threading.Thread(target=lambda: frames.extend(one_frame() for _ in range(each)))  # noqa: B023
                   for _ in range(in_flight)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        wall = time.perf_counter() - start
        rows.append(dict(in_flight=in_flight, frames=len(frames), fps=len(frames) / wall,
                         faces=statistics.mean(f["faces"] for f in frames),
                         **{key: statistics.median(f[key] for f in frames)
                            for key in ("decode_ms", "detect_ms", "model_ms", "draw_ms")}))
    return rows


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
        headers = ["variant", "batch", "ms/image", "images/s", "speed-up vs fp32", "max |logit diff|", "top-1 agree"]
        emit(f"\nInference (base branch, {args.size} size), each variant against float32 eager on the same "
             "images\n" + table(headers, [[r["variant"], r["batch"], r["ms_per_image"], r["images_per_s"],
                                           r["speedup"], r["max_abs_diff"], r["top1_agreement"]] for r in rows]))
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
        headers = ["in flight", "frames", "frames/s", "faces/frame", "decode ms", "detect ms", "model ms", "draw ms"]
        emit(f"\nWebcam path of `demo`: {WEBCAM_FRAME[0]}x{WEBCAM_FRAME[1]} JPEG frames, one face, base branch "
             f"({args.size}), detection searching at most {args.webcam_detect_pixels} pixels; per-stage medians\n"
             + ("skipped: needs --webcam-face and the face-detection extra (requirements-faces.txt)" if rows is None
                else table(headers, [[r["in_flight"], r["frames"], r["fps"], r["faces"], r["decode_ms"],
                                      r["detect_ms"], r["model_ms"], r["draw_ms"]] for r in rows])))
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
    parser.add_argument("--device", default="auto", choices=DEVICE_CHOICES)
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
