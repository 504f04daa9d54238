"""The benchmark's model parts: timing in alternating order, the training step (batched vs per
branch, with epoch estimates), inference variants, cost and peak memory."""
import copy
import importlib.util
import statistics
import tempfile
import time
from pathlib import Path

import torch

from models import MODEL_SIZES, build_model, group_loss, inference_model
from models.architectures import architecture, scripts
from models.summary import model_summary

from ..device import TestTimeModel, fast_path, place_model, to_device
from ..engine import model_outputs, sam_step
from ..inference import DEFAULT_IMAGE_SIZE
from ..recipes import recipe
from ..sam import SAM

# Anchors per epoch: RAF-DB basic, FERPlus after the majority vote (about), AffectNet-8 balanced.
EPOCH_ANCHORS = {"RAF-DB": 12271, "FERPlus": 28500, "AffectNet-8": 287651}


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


def input_side(size):
    """The input side in pixels of model size `size`: the released side for the paper size, the small
    presets their own internal side."""
    return DEFAULT_IMAGE_SIZE if size == "paper" else MODEL_SIZES[size]["input_size"]


def make_group(arch, batch, size, device, seed=1):
    """Random images of one batch of groups, with labels, for `arch` at model size `size` (at its
    `input_side`)."""
    generator = torch.Generator().manual_seed(seed)
    side = input_side(size)
    images = [torch.randn(batch, 3, side, side, generator=generator).to(device)
              for _ in range(architecture(arch).branches)]
    y = torch.arange(batch, device=device) % 7
    return images, y, (y + 1) % 7


def training_step_setup(arch, batch, args):
    """`(model, images, y, y_n, SAM optimizer)` of a training step on random groups, on the run's
    device and memory format."""
    model = build_model(arch, 7, size=args.size, checkpoint_backbone=args.checkpoint_backbone).train()
    images, y, y_n = make_group(arch, batch, args.size, args.device)
    place_model(model, args.device, args.channels_last)
    images = to_device(images, args.device, args.channels_last)
    return model, images, y, y_n, SAM(model.parameters(), torch.optim.Adam, rho=0.05, lr=3e-6)


def first_pass_difference(model, images, y, y_n):
    """Largest |difference| of the loss and each output's cross-entropy, batched vs per branch."""
    with torch.no_grad():
        losses = [torch.cat([loss.reshape(1), per_output]) for loss, per_output in
                  (group_loss(model_outputs(m, images), y, y_n) for m in (model, model.forward_per_branch))]
    return (losses[0] - losses[1]).abs().max().item()


def train_row(arch, args):
    torch.manual_seed(0)
    model, images, y, y_n, optimizer = training_step_setup(arch, args.batch, args)
    runs = {"batched": torch.compile(model) if args.compile else model}
    row = dict(arch=arch, batch=args.batch)
    if architecture(arch).cross:
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
        if row["arch"] not in scripts():  # the baseline has no recipe of its own
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
    from . import onnx_model

    if any(importlib.util.find_spec(name) is None for name in onnx_model.EXPORT_MODULES):
        return None
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.onnx"
        onnx_model.export_onnx(model.cpu(), image_size, path)
        return onnx_model.OnnxModel(path)  # the session holds the graph; the file may go


def inference_rows(args):
    """ms/image of each variant at each batch, its speed-up over float32 eager, and how far its
    logits are from float32's (max |difference|, top-1 agreement) on the same random images."""
    torch.manual_seed(0)
    model = inference_model(build_model("qcs", 7, size=args.size)).eval().to(args.device)
    variants = inference_variants(model, args, input_side(args.size))
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


def memory_row(args):
    if args.device.type != "cuda":
        return None
    model, images, y, y_n, optimizer = training_step_setup("qcs", args.fit_batch, args)
    torch.cuda.reset_peak_memory_stats(args.device)
    sam_step(model, optimizer, images, y, y_n, amp=args.amp)
    return dict(batch=args.fit_batch, peak_gib=torch.cuda.max_memory_allocated(args.device) / 2 ** 30)
