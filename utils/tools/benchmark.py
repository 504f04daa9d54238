"""Training and inference speed of the base, DCS and QCS networks.

Run: python -m utils.benchmark [--arch base dcs qcs] [--size paper] [--batch 4] [--device auto|cpu|cuda]
     [--amp] [--compile] [--channels-last] [--checkpoint-backbone] [--repeats N] [--quick]
     [--parts train inference cost sampling fit24] [--warmup N] [--min-sample-seconds S] [--keep-heap]
     [--threads N]

Parts (all by default):
- train: anchors/s of a full SAM step (two forward+backward passes and the Adam step) with the
  branches of a group batched through the backbone, and with one backbone call per branch
  (`batch_branches = False`), timed alternately on the same model, plus the difference of their
  first-pass losses from the same weights and inputs (float32), and epoch-time estimates.
- inference: ms/image and images/s of the inference model (the base branch of DCS/QCS) against
  a plain base model of the same size, at batch 8 and 1.
- cost: parameters and inference GFLOPs.
- sampling: QCS groups/s drawn from an AffectNet-sized label list.
- fit24 (CUDA only): peak memory of a QCS training step at batch 24.

Every timing is the median over --repeats samples after --warmup untimed runs; a sample repeats
a fast call until it lasts --min-sample-seconds. Runs being compared alternate (A B, B A, A B ...)
so that load from other processes, drift and position in the cycle hit them alike. Peak memory
is torch.cuda.max_memory_allocated on CUDA; on CPU it is how far the process's peak resident set
size (getrusage) rose during one run, the peak being reset to the current RSS first where Linux
allows it. Memory is measured in
one extra untimed run of each configuration after the timed ones.
"""
import argparse
import ctypes
import math
import os
import platform
import resource
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F

from data_preprocessing import GroupSampler
from data_preprocessing.bench import affectnet_like_labels, best_of
from models import ARCHS, MODEL_SIZES, build_model, group_loss, inference_model
from models.summary import model_summary

from ..engine import autocast
from ..recipes import recipe
from ..sam import SAM

PARTS = ("train", "inference", "cost", "sampling", "fit24")
# Training anchors per epoch: RAF-DB basic, FERPlus after the majority vote (about), AffectNet-8 balanced.
EPOCH_ANCHORS = {"RAF-DB": 12271, "FERPlus": 28500, "AffectNet-8": 287651 // 8}
TARGET_SPEEDUP = 1.3
TARGET_GROUPS_PER_S = 100_000
LOSS_TOLERANCE = 1e-5  # float32: expected ~1e-6 or less
INFERENCE_TOLERANCE = 1.05  # "no slower", allowing 5% timing noise
RTX3090_BYTES = 24 * 2 ** 30
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc mallopt parameters


@dataclass
class Settings:
    """What to measure and how; `python -m utils.benchmark --help` describes each."""
    size: str = "paper"
    batch: int = 4
    device: str = "cpu"
    amp: bool = False
    compile: bool = False
    channels_last: bool = False
    checkpoint_backbone: bool = False
    repeats: int = 3
    warmup: int = 1
    num_classes: int = 7
    image_size: int = 224
    lr: float = 3e-6
    inference_batches: tuple = (8, 1)
    fit_batch: int = 24
    min_sample_seconds: float = 1.0
    seed: int = 0
    notes: list = field(default_factory=list)

    @property
    def torch_device(self):
        return torch.device(self.device)


# ---------------------------------------------------------------- timing and memory

def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_rss_bytes():
    """The process's peak resident set size (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def release_free_heap():
    """Give memory freed by the allocator back to the OS (glibc), so RSS growth is not hidden by reuse."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


def keep_freed_heap():
    """glibc: serve large blocks from the heap (no mmap) and never trim it, so memory freed by one
    step is reused by the next instead of being unmapped and page-faulted in again. False if unsupported."""
    try:
        libc = ctypes.CDLL(None)
        return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 2 ** 31 - 1))
    except (OSError, AttributeError):
        return False


def reset_peak_rss():
    """Reset the peak RSS to the current RSS (Linux ≥ 4.0); False where that is not possible."""
    release_free_heap()
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def memory_label(device, exact=True):
    if device.type == "cuda":
        return "peak CUDA memory allocated"
    if exact:
        return "peak RSS growth above the RSS at the start of one untimed run (after timing)"
    return "growth of the process's peak RSS (high-water mark: 0 when below an earlier peak)"


class PeakMemory:
    """`with PeakMemory(device) as m: ...; m.bytes`.

    CUDA: the peak allocation during the block. CPU: how far the process's peak RSS
    (getrusage) rose during the block; `exact` tells whether the peak could be reset to the
    current RSS first, otherwise a block staying below an earlier peak reads 0.
    """

    def __init__(self, device):
        self.device = device
        self.bytes = 0
        self.exact = device.type == "cuda"

    def __enter__(self):
        if self.device.type == "cuda":
            synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self.exact = reset_peak_rss()
            self.start = peak_rss_bytes()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            synchronize(self.device)
            self.bytes = torch.cuda.max_memory_allocated(self.device)
        else:
            self.bytes = peak_rss_bytes() - self.start


def calls_per_sample(call_seconds, min_sample_seconds):
    """Calls per timed sample so that a sample lasts at least `min_sample_seconds`."""
    if not call_seconds or min_sample_seconds <= 0:
        return 1
    return max(1, math.ceil(min_sample_seconds / call_seconds))


@dataclass
class Timing:
    """Per-call seconds of each timed sample, the calls per sample and the peak memory per run."""
    seconds: dict
    calls: int
    peaks: dict
    exact_memory: bool

    def median(self, name):
        return statistics.median(self.seconds[name])


def interleaved_times(runs, repeats, warmup, device, min_sample_seconds=0.0):
    """Run each named callable `warmup` times, then time them alternately (A B, B A, A B, ...).

    A sample repeats the call enough times to last `min_sample_seconds` (judged from the
    fastest warm-up call) and records the time per call. Afterwards one untimed call of each
    run measures its peak memory, so that memory bookkeeping never disturbs the timing.
    """
    warm = {}
    for _ in range(warmup):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            synchronize(device)
            warm[name] = time.perf_counter() - start
    calls = calls_per_sample(min(warm.values(), default=None), min_sample_seconds)
    seconds = {name: [] for name in runs}
    for repeat in range(repeats):
        order = list(runs.items())
        for name, run in (order if repeat % 2 == 0 else order[::-1]):  # A B, B A, ...: no position bias
            synchronize(device)
            start = time.perf_counter()
            for _ in range(calls):
                run()
            synchronize(device)
            seconds[name].append((time.perf_counter() - start) / calls)
    peaks, exact = {}, True
    for name, run in runs.items():
        with PeakMemory(device) as memory:
            run()
        peaks[name], exact = memory.bytes, exact and memory.exact
    return Timing(seconds, calls, peaks, exact)


# ---------------------------------------------------------------- models and inputs

def make_model(arch, settings):
    """A freshly seeded model on the device, float32, dropout 0, in train mode."""
    torch.manual_seed(settings.seed)
    model = build_model(arch, settings.num_classes, size=settings.size, drop=0.0,
                        cross_drop=0.0, checkpoint_backbone=settings.checkpoint_backbone)
    model.to(settings.torch_device)
    if settings.channels_last:
        model.to(memory_format=torch.channels_last)
    return model.train()


def make_images(count, batch, settings, seed=1):
    """`count` random image batches (batch×3×S×S) on the device."""
    generator = torch.Generator().manual_seed(seed)
    memory_format = torch.channels_last if settings.channels_last else torch.contiguous_format
    return [torch.randn(batch, 3, settings.image_size, settings.image_size, generator=generator)
            .to(settings.torch_device).contiguous(memory_format=memory_format) for _ in range(count)]


def make_group(arch, batch, settings):
    """Images of one training group (1, 2 or 4 branches), anchor labels y and negative labels y_n ≠ y."""
    generator = torch.Generator().manual_seed(settings.seed + 2)
    k = settings.num_classes
    y = torch.randint(0, k, (batch,), generator=generator)
    y_n = (y + torch.randint(1, k, (batch,), generator=generator)) % k
    device = settings.torch_device
    return make_images(ARCHS[arch], batch, settings), y.to(device), y_n.to(device)


def training_loss(model, images, y, y_n):
    """The training loss of one group: the group loss, or cross-entropy for the base model."""
    if len(images) == 1:
        return F.cross_entropy(model(images[0]), y)
    return group_loss(model(*images), y, y_n)[0]


def sam_step(model, optimizer, group, settings):
    """One SAM step: forward+backward, ascend, forward+backward, restore, Adam step."""
    images, y, y_n = group
    with autocast(settings.torch_device, settings.amp):
        loss = training_loss(model, images, y, y_n)
    loss.backward()
    optimizer.first_step()
    with autocast(settings.torch_device, settings.amp):
        second_loss = training_loss(model, images, y, y_n)
    second_loss.backward()
    optimizer.second_step()


def make_optimizer(model, settings):
    return SAM(model.parameters(), torch.optim.Adam, rho=0.05, lr=settings.lr)


# ---------------------------------------------------------------- train step

@torch.no_grad()
def first_pass_loss_difference(model, group):
    """Largest |difference| between the batched and per-branch first-pass losses (the loss and
    each output's cross-entropy) from the same weights and inputs, float32, train mode."""
    images, y, y_n = group
    results = []
    try:
        for batched in (True, False):
            model.batch_branches = batched
            loss, per_output = group_loss(model(*images), y, y_n)
            results.append(torch.cat([loss.reshape(1), per_output]).float())
    finally:
        model.batch_branches = True
    return (results[0] - results[1]).abs().max().item()


def time_batched_vs_per_branch(model, step_model, optimizer, group, settings):
    """Seconds per SAM step of the batched and the per-branch implementation of one model,
    timed alternately in this one call so that their ratio sees the same machine load."""
    def step_with(batched):
        def run():
            model.batch_branches = batched
            sam_step(step_model, optimizer, group, settings)
        return run
    runs = {"batched": step_with(True), "per-branch": step_with(False)}
    try:
        return interleaved_times(runs, settings.repeats, settings.warmup, settings.torch_device,
                                 settings.min_sample_seconds)
    finally:
        model.batch_branches = True


def train_step_row(arch, settings):
    """Train-step throughput of one arch; for DCS/QCS batched vs per-branch and the loss check."""
    device = settings.torch_device
    model = make_model(arch, settings)
    group = make_group(arch, settings.batch, settings)
    optimizer = make_optimizer(model, settings)
    step_model = torch.compile(model) if settings.compile else model
    row = dict(arch=arch, batch=settings.batch, branches=ARCHS[arch])
    if arch == "base":
        runs = {"batched": lambda: sam_step(step_model, optimizer, group, settings)}
        timing = interleaved_times(runs, settings.repeats, settings.warmup, device, settings.min_sample_seconds)
    else:
        row["loss_max_abs_diff"] = first_pass_loss_difference(model, group)
        timing = time_batched_vs_per_branch(model, step_model, optimizer, group, settings)
    row.update(calls_per_sample=timing.calls, exact_memory=timing.exact_memory)
    for name, key in (("batched", "batched"), ("per-branch", "per_branch")):
        if name in timing.seconds:
            row[f"{key}_step_s"] = timing.median(name)
            row[f"{key}_step_times_s"] = timing.seconds[name]
            row[f"{key}_anchors_per_s"] = settings.batch / timing.median(name)
            row[f"{key}_peak_bytes"] = timing.peaks[name]
    if "per_branch_step_s" in row:
        row["speedup"] = row["per_branch_step_s"] / row["batched_step_s"]
    return row


def epoch_estimates(train_rows):
    """Epoch and whole-recipe time at each cross arch's measured batched anchors/s."""
    estimates = []
    for row in train_rows:
        if row["arch"] == "base":
            continue
        for dataset, anchors in EPOCH_ANCHORS.items():
            epoch_s = anchors / row["batched_anchors_per_s"]
            epochs = recipe(row["arch"], dataset)["epochs"]
            estimates.append(dict(arch=row["arch"], dataset=dataset, anchors=anchors, epoch_s=epoch_s,
                                  recipe_epochs=epochs, recipe_s=epoch_s * epochs,
                                  recipe_batch=recipe(row["arch"], dataset)["batch_size"]))
    return estimates


def run_train(settings, archs):
    rows = [train_step_row(arch, settings) for arch in archs]
    return dict(rows=rows, epoch_estimates=epoch_estimates(rows))


# ---------------------------------------------------------------- inference

def inference_models(settings, archs):
    """{name: eval model}: a plain base model and each cross arch's inference model, same weights."""
    plain = make_model("base", settings).eval()
    models = {"base model alone": plain}
    for arch in archs:
        if arch != "base":
            net = inference_model(make_model(arch, settings)).eval()
            net.load_state_dict(plain.state_dict())
            models[f"{arch.upper()} inference model"] = net
    return models


def run_inference(settings, archs):
    """Latency and throughput of each inference model at each batch, timed alternately."""
    device = settings.torch_device
    models = inference_models(settings, archs)
    callables = {name: (torch.compile(m) if settings.compile else m) for name, m in models.items()}
    rows = []
    for batch in settings.inference_batches:
        (x,) = make_images(1, batch, settings, seed=3)

        def forward(net, x=x):
            with torch.inference_mode(), autocast(device, settings.amp):
                net(x)
        runs = {name: (lambda net=net: forward(net)) for name, net in callables.items()}
        timing = interleaved_times(runs, settings.repeats, settings.warmup, device, settings.min_sample_seconds)
        reference = timing.median("base model alone")
        for name, times in timing.seconds.items():
            call = timing.median(name)
            rows.append(dict(model=name, batch=batch, ms_per_image=1000 * call / batch,
                             images_per_s=batch / call, relative_time=call / reference, times_s=times,
                             calls_per_sample=timing.calls, peak_bytes=timing.peaks[name],
                             exact_memory=timing.exact_memory))
    return dict(rows=rows)


# ---------------------------------------------------------------- cost, sampling, batch 24

def run_cost(settings, archs):
    """Parameter counts and inference GFLOPs (224×224 input) per arch."""
    rows = []
    for arch in archs:
        torch.manual_seed(settings.seed)
        model = build_model(arch, settings.num_classes, size=settings.size)
        rows.append(dict(arch=arch, **model_summary(model)))
    return dict(rows=rows)


def run_sampling(settings, archs=None):
    """QCS groups/s (indices only) from an AffectNet-sized label list, shuffled and class-balanced."""
    labels = affectnet_like_labels(settings.seed)
    rows = []
    for balanced in (False, True):
        sampler = GroupSampler(labels, 4, seed=settings.seed, balanced=balanced)
        seconds = best_of(max(settings.repeats, 1), sampler.epoch_groups)
        rows.append(dict(anchors="class-balanced" if balanced else "shuffled", labels=len(labels),
                         groups=len(sampler), groups_per_s=len(sampler) / seconds))
    return dict(rows=rows)


def run_fit24(settings, archs):
    """CUDA only: peak memory of a batched QCS SAM step at batch `settings.fit_batch` (the second
    step, so that the Adam state is included)."""
    device = settings.torch_device
    if device.type != "cuda":
        return dict(skipped="CUDA only")
    arch = "qcs"
    result = dict(arch=arch, batch=settings.fit_batch,
                  device_bytes=torch.cuda.get_device_properties(device).total_memory)
    try:
        model = make_model(arch, settings)
        step_model = torch.compile(model) if settings.compile else model
        optimizer = make_optimizer(model, settings)
        group = make_group(arch, settings.fit_batch, settings)
        sam_step(step_model, optimizer, group, settings)  # creates the Adam state that later steps hold
        with PeakMemory(device) as memory:
            sam_step(step_model, optimizer, group, settings)
        result.update(fits=True, peak_bytes=memory.bytes, fits_rtx3090=memory.bytes < RTX3090_BYTES)
    except torch.cuda.OutOfMemoryError:
        result.update(fits=False, peak_bytes=None, fits_rtx3090=False)
    finally:
        torch.cuda.empty_cache()
    return result


RUNNERS = {"train": run_train, "inference": run_inference, "cost": run_cost,
           "sampling": run_sampling, "fit24": run_fit24}


def describe_setup(settings):
    device = settings.torch_device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or "CPU")
    return dict(settings=asdict(settings), device_name=name, torch=torch.__version__,
                threads=torch.get_num_threads(), cpu_count=os.cpu_count(),
                load_average_start=os.getloadavg())


def run_benchmark(settings, archs, parts=PARTS, emit=None):
    """Measure the chosen parts; returns the report dict. `emit(text)` gets each part's table
    as soon as it is measured."""
    unknown = [a for a in archs if a not in ARCHS]
    if unknown:
        raise ValueError(f"unknown --arch {unknown}; choose from {', '.join(ARCHS)}")
    report = dict(setup=describe_setup(settings))
    if emit:
        emit(format_setup(report))
    for part in parts:
        report[part] = RUNNERS[part](settings, archs)
        if emit:
            emit(FORMATTERS[part](report[part], settings))
    report["setup"]["load_average_end"] = os.getloadavg()
    return report


# ---------------------------------------------------------------- formatting

def format_table(headers, rows):
    """Plain-text table, columns right-aligned except the first."""
    cells = [list(map(str, headers))] + [list(map(str, row)) for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def mib(nbytes):
    return "-" if nbytes is None else f"{nbytes / 2 ** 20:,.0f} MiB"


def duration(seconds):
    hours, rest = divmod(int(round(seconds)), 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


def verdict(ok):
    return "met" if ok else "NOT met"


def format_train(part, settings):
    device = settings.torch_device
    rows, lines = [], []
    for r in part["rows"]:
        compared = "speedup" in r
        rows.append([r["arch"].upper(), r["batch"], f"{r['batched_step_s']:.3f}", f"{r['batched_anchors_per_s']:.2f}",
                     f"{r['per_branch_step_s']:.3f}" if compared else "-",
                     f"{r['per_branch_anchors_per_s']:.2f}" if compared else "-",
                     f"{r['speedup']:.2f}x" if compared else "-",
                     f"{r['loss_max_abs_diff']:.1e}" if compared else "-",
                     mib(r["batched_peak_bytes"]), mib(r["per_branch_peak_bytes"]) if compared else "-"])
    steps = ", ".join(f"{r['arch'].upper()} {r['calls_per_sample']}" for r in part["rows"])
    lines.append(f"Training: full SAM step (2 x forward+backward + Adam), median of {settings.repeats} "
                 f"sample(s) (steps per sample: {steps}), batched and per-branch alternating")
    lines.append(format_table(["arch", "batch", "batched s/step", "anchors/s", "per-branch s/step", "anchors/s",
                               "speed-up", "loss |diff|", "mem batched", "mem per-branch"], rows))
    exact = all(r["exact_memory"] for r in part["rows"])
    lines.append(f"  mem: {memory_label(device, exact)}")
    for r in part["rows"]:
        if "speedup" in r:
            lines.append(f"  {r['arch'].upper()}: batched {r['speedup']:.2f}x the per-branch speed "
                         f"(target >= {TARGET_SPEEDUP}x: {verdict(r['speedup'] >= TARGET_SPEEDUP)}); "
                         f"first-pass losses identical within {LOSS_TOLERANCE:g}: "
                         f"{verdict(r['loss_max_abs_diff'] <= LOSS_TOLERANCE)} "
                         f"(max |diff| {r['loss_max_abs_diff']:.2e}); s/step batched "
                         f"{fmt_times(r['batched_step_times_s'])}, "
                         f"per-branch {fmt_times(r['per_branch_step_times_s'])}")
    if part["epoch_estimates"]:
        lines.append(f"Epoch time at the measured batched rate (batch {settings.batch}; the recipes use the "
                     f"batch shown, which is usually faster per anchor on a GPU)")
        lines.append(format_table(
            ["arch", "dataset", "anchors/epoch", "epoch", "recipe epochs", "recipe total", "recipe batch"],
            [[e["arch"].upper(), e["dataset"], f"{e['anchors']:,}", duration(e["epoch_s"]), e["recipe_epochs"],
              duration(e["recipe_s"]), e["recipe_batch"]] for e in part["epoch_estimates"]]))
    return "\n".join(lines)


def fmt_times(times):
    return "[" + ", ".join(f"{t:.3g}" for t in times) + "]"


def format_inference(part, settings):
    device = settings.torch_device
    rows = [[r["model"], r["batch"], f"{r['ms_per_image']:.2f}", f"{r['images_per_s']:.1f}",
             f"{r['relative_time']:.3f}", r["calls_per_sample"], mib(r["peak_bytes"])] for r in part["rows"]]
    exact = all(r["exact_memory"] for r in part["rows"])
    lines = [f"Inference: median of {settings.repeats} sample(s), models alternating, eval mode, no grad",
             format_table(["model", "batch", "ms/image", "images/s", "time vs base", "calls/sample", "mem"], rows),
             f"  mem: {memory_label(device, exact)}"]
    worst = max((r["relative_time"] for r in part["rows"] if r["model"] != "base model alone"), default=None)
    if worst is not None:
        lines.append(f"  inference model no slower than the base model alone (<= {INFERENCE_TOLERANCE:.2f}x, "
                     f"timing noise allowed): {verdict(worst <= INFERENCE_TOLERANCE)} (worst {worst:.3f}x)")
    return "\n".join(lines)


def format_cost(part, settings):
    rows = [[r["arch"].upper(), f"{r['base_params'] / 1e6:.2f} M", f"{r['cross_params'] / 1e6:.2f} M",
             f"{r['total_params'] / 1e6:.2f} M", f"{r['inference_gflops']:.2f}"] for r in part["rows"]]
    return "\n".join([f"Cost ({settings.size} size)",
                      format_table(["arch", "inference params", "cross params", "train params",
                                    "inference GFLOPs/image"], rows)])


def format_sampling(part, settings):
    rows = [[r["anchors"], f"{r['labels']:,}", f"{r['groups']:,}", f"{r['groups_per_s']:,.0f}",
             verdict(r["groups_per_s"] >= TARGET_GROUPS_PER_S)] for r in part["rows"]]
    return "\n".join(["QCS group sampling (indices only), AffectNet-8-sized label list, best of "
                      f"{max(settings.repeats, 1)}",
                      format_table(["anchors", "labels", "groups/epoch", "groups/s",
                                    f">= {TARGET_GROUPS_PER_S:,}"], rows)])


def format_fit24(part, settings):
    if "skipped" in part:
        return f"Batch {settings.fit_batch} check: skipped ({part['skipped']})"
    if not part["fits"]:
        return (f"Batch {part['batch']} {part['arch'].upper()} SAM step: does NOT fit "
                f"({mib(part['device_bytes'])} on this device)")
    return (f"Batch {part['batch']} {part['arch'].upper()} SAM step: fits, peak {mib(part['peak_bytes'])} "
            f"of {mib(part['device_bytes'])}; under 24 GiB (RTX 3090): {'yes' if part['fits_rtx3090'] else 'no'}")


FORMATTERS = {"train": format_train, "inference": format_inference, "cost": format_cost,
              "sampling": format_sampling, "fit24": format_fit24}


def format_setup(report):
    setup = report["setup"]
    s = setup["settings"]
    flags = [name for name in ("amp", "compile", "channels_last", "checkpoint_backbone") if s[name]]
    load = " ".join(f"{v:.2f}" for v in setup["load_average_start"])
    return (f"Device {s['device']} ({setup['device_name']}), torch {setup['torch']}, "
            f"{setup['threads']} threads, {setup['cpu_count']} CPUs, load average at start {load}\n"
            f"Size {s['size']}, train batch {s['batch']}, images {s['image_size']}x{s['image_size']}, "
            f"float32{' + bf16 autocast' if s['amp'] else ''}, options: {', '.join(flags) or 'none'}"
            + "".join(f"\nNote: {note}" for note in s["notes"]))


# ---------------------------------------------------------------- command line

def build_parser():
    parser = argparse.ArgumentParser(prog="python -m utils.benchmark", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", nargs="+", default=list(ARCHS), choices=tuple(ARCHS))
    parser.add_argument("--size", choices=tuple(MODEL_SIZES), default=None,
                        help="model size (default paper; tiny with --quick)")
    parser.add_argument("--batch", type=int, default=4, help="training anchors per step (default 4)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA only)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the models")
    parser.add_argument("--channels-last", action="store_true", help="channels_last models and inputs")
    parser.add_argument("--checkpoint-backbone", action="store_true",
                        help="recompute the backbone in backward (activation checkpointing)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats (default 3; 1 with --quick)")
    parser.add_argument("--warmup", type=int, default=1,
                        help="untimed runs before timing (default 1; use 2 with --compile so that the "
                             "calls per sample are judged from a compiled run)")
    parser.add_argument("--min-sample-seconds", type=float, default=None,
                        help="repeat a fast call within one timed sample until it lasts this long "
                             "(default 1.0; 0.1 with --quick)")
    parser.add_argument("--quick", action="store_true",
                        help="1 repeat, 0.1 s samples and the tiny size, unless given")
    parser.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS, help="what to measure")
    parser.add_argument("--keep-heap", action="store_true",
                        help="CPU, glibc: keep freed memory for reuse (no mmap for large blocks, no heap "
                             "trimming); by default large activations are page-faulted in anew every step")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    return parser


def settings_from_args(args, parser):
    if args.batch < 1:
        parser.error(f"--batch must be >= 1, got {args.batch}")
    if args.repeats is not None and args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    if args.warmup < 0:
        parser.error(f"--warmup must be >= 0, got {args.warmup}")
    if args.min_sample_seconds is not None and args.min_sample_seconds < 0:
        parser.error(f"--min-sample-seconds must be >= 0, got {args.min_sample_seconds}")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda was requested but CUDA is not available")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    notes = []
    if args.keep_heap:
        notes.append("--keep-heap: " + ("glibc keeps freed memory for reuse (mallopt)" if keep_freed_heap()
                                       else "not supported by this C library; default allocator"))
    if args.amp and device != "cuda":
        notes.append("--amp has no effect on CPU (bf16 autocast is CUDA only here); timings are float32")
    return Settings(size=args.size or ("tiny" if args.quick else "paper"), batch=args.batch, device=device,
                    amp=args.amp, compile=args.compile, channels_last=args.channels_last,
                    checkpoint_backbone=args.checkpoint_backbone,
                    repeats=args.repeats or (1 if args.quick else 3), warmup=args.warmup,
                    min_sample_seconds=(args.min_sample_seconds if args.min_sample_seconds is not None
                                        else 0.1 if args.quick else 1.0), notes=notes)


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    settings = settings_from_args(args, parser)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    parts = [p for p in PARTS if p in args.parts]

    def emit(text):
        print(text + "\n", flush=True)

    report = run_benchmark(settings, args.arch, parts, emit=emit)
    print("Load average at end: " + " ".join(f"{v:.2f}" for v in report["setup"]["load_average_end"]))
    return report


if __name__ == "__main__":
    main()
