"""Command line of `main_DCS.py` / `main_QCS.py`: train, resume and evaluate.

One training engine (`utils.engine`) serves both; the per-dataset differences are the
table in `utils.recipes`.
"""
import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset

from data_preprocessing import (DATASET_NAMES, DataError, GroupDataset, GroupSampler, build_dataset,
                                extra_test_splits, test_transform_for, train_transform)
from models import OPTION_CHOICES, WeightsError, build_model, load_backbone, load_weights, read_checkpoint

from . import distributed as ddp
from .checkpointing import atomic_save, atomic_write_text, new_run_dir, set_rng_states, training_checkpoint
from .engine import (DeviceUnavailable, EpochMeter, NonFiniteLoss, ProgressLog, classification_summary,
                     evaluate, resolve_device, train_one_epoch)
from .recipes import recipe
from .reporting import (format_confusion, format_report, loss_columns, make_logger, plot_confusion, plot_losses,
                        write_metrics)
from .sam import SAM
from .inference import CheckpointError, load_checkpoint, load_trained_model

DEFAULT_PRETRAINED = Path("models/pretrain/ir50.pth")
DEFAULT_DATASET = "RAF-DB"
NUM_BRANCHES = {"base": 1, "dcs": 2, "qcs": 4}
# Options a resumed run may change; everything else comes from the checkpoint.
RESUME_OVERRIDABLE = {"epochs", "workers", "device", "amp", "compile", "compile_backend", "channels_last",
                      "print_freq", "save_every", "resume", "output_dir"}


class UsageError(Exception):
    """A problem with the command line or its inputs, reported before any training starts."""


def build_parser(arch):
    parser = argparse.ArgumentParser(
        prog=f"main_{arch.upper()}.py",
        description=f"Train or evaluate {arch.upper()} (IR50+ViT base branch with the "
                    f"{'two' if arch == 'dcs' else 'four'}-branch cross module). Defaults per dataset "
                    "reproduce the authors' released scripts; every one can be overridden.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", choices=DATASET_NAMES,
                      help="default RAF-DB; with --evaluate of our checkpoint, the dataset it was trained on")
    data.add_argument("--data-root", help="dataset folder (default: ./datas/<dataset>)")
    data.add_argument("--classes", help="comma-separated class names in label order (folder datasets)")
    data.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="DataLoader workers")
    data.add_argument("--balanced-sampler", action=argparse.BooleanOptionalAction, default=None,
                      help="class-balanced anchors (default: on for AffectNet only)")
    data.add_argument("--image-size", type=int, help="final image side (default 224; 56 for demo)")
    train = parser.add_argument_group("training (defaults: the dataset's released recipe)")
    train.add_argument("--epochs", type=int)
    train.add_argument("-b", "--batch-size", type=int, help="anchors per step and per process")
    train.add_argument("--lr", type=float)
    train.add_argument("--rho", type=float, default=0.05, help="SAM neighbourhood size")
    train.add_argument("--gamma", type=float, default=0.98, help="ExponentialLR decay per epoch")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--pretrained", default=str(DEFAULT_PRETRAINED),
                       help="initialise the IR50 backbone from this file: face-recognition IR50 weights "
                            "(either naming) or any checkpoint (ours, the authors', a state dict), of "
                            "which only the backbone is taken ('none' to skip)")
    train.add_argument("--baseline", action="store_true",
                       help="train the base branch alone (IR50+ViT, no cross module) on single images, "
                            "with this script's recipe: the paper's baseline")
    model = parser.add_argument_group("model (ablations of the paper)")
    model.add_argument("--size", choices=OPTION_CHOICES["size"], help="model size (default paper; tiny for demo)")
    model.add_argument("--attention", default="csa", choices=OPTION_CHOICES["attention"],
                       help="csa, or the scaled dot-product ablation sdpa (as released for DCS; "
                            "for QCS an extension of this repository: the release has none)")
    model.add_argument("--matrix", default="sd", choices=OPTION_CHOICES["matrix"],
                       help="QCS similarity terms: sd = S + k·D, s = S only, d = D only (no k)")
    model.add_argument("--connection", default="vit", choices=OPTION_CHOICES["connection"])
    model.add_argument("--drop", type=float, help="base ViT dropout")
    model.add_argument("--cross-drop", type=float, help="cross ViT dropout")
    model.add_argument("--proj-drop-rule", default="auto", choices=OPTION_CHOICES["proj_drop_rule"],
                       help="dropout on the attention projection: auto = as released (none for 7 "
                            "classes, the ViT's dropout for 8)")
    model.add_argument("--cross-block", default="auto", choices=OPTION_CHOICES["cross_block"],
                       help="cross-block form: auto = as released (pre-norm for 8-class DCS, "
                            "in-place otherwise)")
    model.add_argument("--distill", default="none", choices=("none", "kl", "mse"),
                       help="extra base-vs-cross logit loss")
    model.add_argument("--distill-weight", type=float, default=1.0)
    model.add_argument("--temperature", type=float, default=1.0)
    run = parser.add_argument_group("run")
    run.add_argument("--output-dir", help="run folder (default: log/<dataset>-<arch>-<time>); must be new")
    run.add_argument("--print-freq", type=int, default=50,
                     help="log a progress line every N steps, also into log.txt (0: only epoch lines)")
    run.add_argument("--save-every", type=float, default=30.0, metavar="MINUTES",
                     help="also write a resumable last.pth within an epoch this often (0: at epoch ends only)")
    run.add_argument("--resume", metavar="CKPT", help="continue the run saved in CKPT (its last.pth)")
    run.add_argument("--evaluate", metavar="CKPT",
                     help="evaluate CKPT (ours or the authors') on the test split and exit")
    run.add_argument("--predictions", metavar="FILE.csv", help="with --evaluate: per-image logits")
    run.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    run.add_argument("--amp", action="store_true",
                     help="bf16 autocast (CUDA or CPU): faster, results differ slightly from float32")
    run.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                     help="channels_last memory format for the convolutions (default: on with CUDA)")
    run.add_argument("--compile", action="store_true", help="torch.compile the model")
    run.add_argument("--compile-backend", default="inductor",
                     help="with --compile: the torch.compile backend (e.g. aot_eager, which compiles "
                          "much faster on the CPU but generates no fused kernels)")
    run.add_argument("--checkpoint-backbone", action="store_true",
                     help="recompute backbone activations in backward (less memory)")
    return parser


def main(arch, argv=None):
    """Entry point of `main_DCS.py` (`arch="dcs"`) and `main_QCS.py` (`arch="qcs"`)."""
    args = build_parser(arch).parse_args(argv)
    args.given = given_options(arch, argv)
    logger = make_logger(enabled=True)
    try:
        if args.evaluate:
            return run_evaluation(arch, args, logger)
        previous = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
        try:
            return run_training(arch, args)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
    except (UsageError, DataError, WeightsError, CheckpointError, DeviceUnavailable, FileExistsError,
            FileNotFoundError) as error:
        logger.error(f"error: {error}")
        return 2
    except NonFiniteLoss as error:
        logger.error(f"stopped: {error}")
        return 1
    finally:
        ddp.cleanup()


def given_options(arch, argv):
    """Names of the options given on the command line, whatever their values."""
    probe = build_parser(arch)
    for action in probe._actions:
        action.default = argparse.SUPPRESS
    return set(vars(probe.parse_args(argv)))


def resolve_config(arch, args):
    """Command-line values, with the dataset's recipe filling everything left unset."""
    if args.resume and args.evaluate:
        raise UsageError("--resume and --evaluate cannot be used together")
    if args.predictions and not args.evaluate:
        raise UsageError("--predictions is only used with --evaluate")
    if args.evaluate and args.baseline:
        raise UsageError("--baseline is a training option; --evaluate follows the checkpoint")
    if "compile_backend" in getattr(args, "given", ()) and not args.compile:
        raise UsageError("--compile-backend is only used with --compile")
    config = {k: v for k, v in vars(args).items() if k != "given"}
    config["dataset"] = config["dataset"] or DEFAULT_DATASET
    defaults = recipe(arch, config["dataset"])
    for key in ("epochs", "batch_size", "lr", "drop", "cross_drop", "size", "image_size", "balanced_sampler"):
        if config[key] is None:
            config[key] = defaults[key]
    for key in ("augmentation", "negatives", "anchor_divisor"):
        config[key] = defaults[key]
    config["arch"] = "base" if config["baseline"] else arch
    config["recipe_arch"] = arch
    check_ranges(config)
    return config


# option → (lowest, highest, whether the bounds themselves are allowed)
OPTION_RANGES = {
    "epochs": (1, None, True), "batch_size": (1, None, True), "workers": (0, None, True),
    "image_size": (16, None, True), "lr": (0, None, False), "rho": (0, None, True),
    "gamma": (0, 1, False), "drop": (0, 1, None), "cross_drop": (0, 1, None),
    "temperature": (0, None, False), "distill_weight": (0, None, True), "print_freq": (0, None, True),
    "save_every": (0, None, True),
}


def check_ranges(config):
    """One clear line, naming the flag, for the first numeric option out of its range."""
    for key, (low, high, inclusive) in OPTION_RANGES.items():
        value = config[key]
        if value is None:
            continue
        if inclusive is None:  # a rate: [low, high)
            ok, allowed = low <= value < high, f"in [{low}, {high})"
        elif inclusive:
            ok, allowed = value >= low, f"at least {low}"
        else:
            ok = value > low and (high is None or value <= high)
            allowed = f"> {low}" + (f" and ≤ {high}" if high is not None else "")
        if not ok:  # NaN fails every comparison too
            raise UsageError(f"--{key.replace('_', '-')} must be {allowed}, got {value}")


def model_from_config(config):
    return build_model(config["arch"], config["num_classes"], size=config["size"],
                       attention=config["attention"], matrix=config["matrix"],
                       connection=config["connection"], drop=config["drop"],
                       cross_drop=config["cross_drop"], proj_drop_rule=config["proj_drop_rule"],
                       cross_block=config.get("cross_block", "auto"),
                       checkpoint_backbone=config["checkpoint_backbone"])


def transforms_for(config):
    """The run's train augmentation and the test transform that goes with it."""
    augmentation, size = dict(config["augmentation"]), config["image_size"]
    return train_transform(**augmentation, size=size), test_transform_for(augmentation, size)


def load_data(config, split, transform):
    classes = config["classes"].split(",") if config.get("classes") else None
    return build_dataset(config["dataset"], split, data_root=config["data_root"], transform=transform,
                         classes=classes)


class IndexedDataset(torch.utils.data.Dataset):
    """`(image, label, index)` items, so evaluation can name its images and gather across ranks."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        image, label = self.dataset[index]
        return image, label, index


def test_loader(dataset, config, device, rank, world_size):
    indexed = IndexedDataset(dataset)
    shard = Subset(indexed, range(rank, len(indexed), world_size)) if world_size > 1 else indexed
    return DataLoader(shard, batch_size=config["batch_size"] * 2, shuffle=False,
                      num_workers=config["workers"], pin_memory=device.type == "cuda",
                      persistent_workers=False, worker_init_fn=leave_signals_to_main,
                      generator=torch.Generator().manual_seed(rank))


# ------------------------------------------------------------------------------------ evaluate

def run_evaluation(arch, args, logger):
    """`--evaluate CKPT`: base branch on the test split; accuracy, mean class accuracy, confusion.

    The network, its size and its test transform follow the checkpoint: what our checkpoints
    record, or for the authors' files the released recipe of the architecture their keys show.
    """
    config = resolve_config(arch, args)
    device = resolve_device(config["device"])
    rank, world_size, _ = ddp.init_distributed(device.type)
    for path in prediction_files(config["predictions"]):
        if path.exists():
            raise FileExistsError(f"{path} exists; refusing to overwrite it (--predictions)")
    info = load_checkpoint(config["evaluate"])[1]
    if args.dataset is None and info.dataset:
        config["dataset"] = info.dataset
    trained = load_trained_model(config["evaluate"], dataset=config["dataset"], class_list=config["classes"],
                                 data_root=config["data_root"], size=args.size, image_size=args.image_size,
                                 recipe_arch=arch)
    transform = trained.transform()
    dataset = load_data(config, "test", transform)
    if dataset.num_classes != len(trained.classes):
        raise UsageError(f"{config['evaluate']} has {len(trained.classes)} classes but "
                         f"{config['dataset']} has {dataset.num_classes}")
    logger.info(f"loaded {config['evaluate']}: {trained.info.format_title}, "
                f"{(trained.info.arch or 'base').upper()} {trained.size} size, {len(trained.classes)} classes")
    logger.info(f"test transform: {describe_transform(transform)}")
    model = trained.model.to(device)
    channels_last = use_channels_last(config, device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if config["compile"]:
        model = torch.compile(model, backend=config["compile_backend"])
    result = evaluate(model, test_loader(dataset, config, device, rank, world_size), device,
                      dataset.num_classes, amp=config["amp"], channels_last=channels_last,
                      keep_logits=bool(config["predictions"]))
    if ddp.is_main_process():
        report = classification_summary(result["confusion"], dataset.classes)
        logger.info(f"test accuracy {result['acc']:.2f}%  mean class accuracy "
                    f"{result['mean_class_acc']:.2f}%  macro-F1 {result['macro_f1']:.2f}%  "
                    f"({len(dataset)} images)")
        logger.info("per class\n" + format_report(report))
        logger.info("confusion matrix (rows: true, columns: predicted)\n"
                    + format_confusion(result["confusion"], dataset.classes))
        if config["predictions"]:
            csv_path, json_path = prediction_files(config["predictions"])
            write_predictions(csv_path, dataset, result["logits"])
            summary = dict(checkpoint=str(config["evaluate"]), dataset=config["dataset"],
                           test_transform=describe_transform(transform), images=len(dataset),
                           accuracy=result["acc"], mean_class_accuracy=result["mean_class_acc"],
                           macro_f1=result["macro_f1"], per_class=report,
                           confusion=result["confusion"].tolist(), classes=dataset.classes)
            with open(json_path, "x") as f:
                json.dump(summary, f, indent=2)
            logger.info(f"wrote {csv_path} and {json_path}")
    return 0


def prediction_files(predictions):
    """`--predictions X.csv` writes X.csv (per image) and X.json (the summary)."""
    if not predictions:
        return ()
    path = Path(predictions)
    return path, path.with_suffix(".json")


def use_channels_last(config, device):
    """`--channels-last`, by default on with CUDA."""
    return config["channels_last"] if config["channels_last"] is not None else device.type == "cuda"


def describe_transform(transform):
    """`Resize((234, 234)) → CenterCrop(224) → ToTensor → Normalize` for a torchvision Compose."""
    steps = []
    for step in transform.transforms:
        size = getattr(step, "size", None)
        size = tuple(size) if isinstance(size, (list, tuple)) else size
        if "Crop" in type(step).__name__ and isinstance(size, tuple) and len(set(size)) == 1:
            size = size[0]  # a crop is square: its side
        steps.append(type(step).__name__ + (f"({size})" if size is not None else ""))
    return " → ".join(steps)


def write_predictions(path, dataset, logits_by_index):
    import csv

    num_classes = dataset.num_classes
    with open(path, "x", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "label", "pred"] + [f"logit_{k}" for k in range(num_classes)])
        for index in range(len(dataset)):
            logits = logits_by_index[index]
            pred = max(range(num_classes), key=logits.__getitem__)
            writer.writerow([dataset.image_names[index], int(dataset.labels[index]), pred]
                            + [f"{v:.6f}" for v in logits])


# ------------------------------------------------------------------------------------ train

def leave_signals_to_main(worker_id):
    """DataLoader workers ignore Ctrl-C and SIGTERM (a scheduler signals the whole process group):
    the main process finishes its step, writes last.pth and stops them."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class RunControl:
    """Stop and save decisions, taken after each step by all ranks together.

    Stop: the first Ctrl-C or SIGTERM on any rank (a second Ctrl-C aborts at once). Save: every
    `save_every_minutes` minutes, a resumable mid-epoch `last.pth` (0: only at epoch ends).
    """

    def __init__(self, save_every_minutes, device):
        self.requested = False
        self.save_every = save_every_minutes * 60.0
        self.device = device
        self.last_save = time.monotonic()

    def __call__(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        print(f"\n{signal.Signals(signum).name}: finishing this step and writing last.pth "
              "(Ctrl-C again to abort)", file=sys.stderr)

    def decide(self):
        """`(stop, save)`, the same on every rank."""
        save_due = bool(self.save_every) and time.monotonic() - self.last_save >= self.save_every
        flags = torch.tensor([float(self.requested), float(save_due)], device=self.device)
        flags = ddp.all_reduce_sum(flags).tolist()
        return flags[0] > 0, flags[1] > 0

    def saved(self):
        self.last_save = time.monotonic()


def run_training(arch, args):
    config = resolve_config(arch, args)
    resumed = None
    if config["resume"]:
        resumed = read_checkpoint(config["resume"])
        config = merge_resumed_config(config, resumed, args)
    device = resolve_device(config["device"])
    rank, world_size, local_rank = ddp.init_distributed(device.type)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
    torch.manual_seed(config["seed"] + rank)

    train_tf, test_tf = transforms_for(config)
    train_set = load_data(config, "train", train_tf)
    test_set = load_data(config, "test", test_tf)
    config["num_classes"] = train_set.num_classes
    arch = config["arch"]
    num_branches = NUM_BRANCHES[arch]
    sampler = GroupSampler(train_set.labels, num_branches, seed=config["seed"],
                           balanced=config["balanced_sampler"], anchor_divisor=config["anchor_divisor"],
                           negatives=config["negatives"], num_replicas=world_size, rank=rank,
                           class_names=train_set.classes)

    model = model_from_config(config)
    pretrained_note = load_pretrained(model, config["pretrained"]) if resumed is None else None
    run_dir = prepare_run_dir(config, resumed, rank)
    logger = make_logger(run_dir, enabled=ddp.is_main_process())
    if pretrained_note:
        logger.info(pretrained_note)
    model.to(device)
    channels_last = use_channels_last(config, device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = SAM(model.parameters(), torch.optim.Adam, rho=config["rho"], lr=config["lr"],
                    betas=(0.9, 0.999), weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer.base_optimizer, gamma=config["gamma"])
    state = dict(epoch=0, step=0, best_acc=0.0, best_epoch=0, history=[], partial=None)
    if resumed is not None:
        state = restore_training(resumed, model, optimizer, scheduler)
        logger.info(f"resumed {config['resume']} at epoch {state['epoch'] + 1}, step {state['step']}")
    train_model = model
    if world_size > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if config["compile"]:
        train_model = torch.compile(train_model, backend=config["compile_backend"])

    name = "baseline (base branch alone)" if arch == "base" else arch.upper()
    logger.info(f"{name} on {config['dataset']}: {len(train_set)} train / {len(test_set)} test "
                f"images, {train_set.num_classes} classes, {world_size} process(es) on {device}; "
                f"run folder {run_dir}")
    control = RunControl(config["save_every"], device)
    signal.signal(signal.SIGINT, control)
    signal.signal(signal.SIGTERM, control)
    # The loaders draw their worker seeds from their own generator, not the global one: a
    # mid-epoch resume then continues the augmentation stream exactly.
    loader_args = dict(num_workers=config["workers"], pin_memory=device.type == "cuda",
                       persistent_workers=config["workers"] > 0, worker_init_fn=leave_signals_to_main,
                       generator=torch.Generator().manual_seed(config["seed"] + rank))
    train_loader = DataLoader(GroupDataset(train_set), batch_size=config["batch_size"],
                              sampler=sampler, **loader_args)
    evaluation_loader = test_loader(test_set, config, device, rank, world_size)
    extra_loaders = {split: test_loader(load_data(config, split, test_tf), config, device, rank, world_size)
                     for split in extra_test_splits(config["dataset"])}
    loss_options = dict(distill=config["distill"], distill_weight=config["distill_weight"],
                        temperature=config["temperature"])
    saver = Saver(run_dir, model, optimizer, scheduler, config, train_set.classes)

    for epoch in range(state["epoch"], config["epochs"]):
        sampler.set_epoch(epoch)
        loader, first_step = train_loader, state["step"]
        if first_step:
            loader = DataLoader(GroupDataset(train_set), batch_size=config["batch_size"],
                                sampler=SkipFirst(sampler, first_step * config["batch_size"]),
                                **{**loader_args, "persistent_workers": False})
        partial = state["partial"] or {}
        meter = EpochMeter(partial if rank == 0 else None)  # sums of all ranks, counted once
        total_steps = len(loader) + first_step
        start, seconds_before = time.perf_counter(), partial.get("seconds", 0.0)

        def after_step(step, meter):
            stop, save = control.decide()
            if stop or save:
                seconds = seconds_before + time.perf_counter() - start
                state.update(epoch=epoch, step=step, partial=dict(meter.global_state(device), seconds=seconds))
                saver.save_last(state)
                control.saved()
                logger.info(f"{'interrupted' if stop else 'saved'} at epoch {epoch + 1}, step {step}/"
                            f"{total_steps}: {saver.last_path()}")
            return stop

        progress_log = ProgressLog(logger, config["print_freq"], epoch, config["epochs"], total_steps,
                                   first_step, optimizer, config["batch_size"] * num_branches * world_size)
        lr = optimizer.param_groups[0]["lr"]
        try:
            _, stopped = train_one_epoch(
                train_model, loader, optimizer, device, epoch, loss_options, amp=config["amp"],
                channels_last=channels_last, image_names=train_set.image_names, meter=meter,
                first_step=first_step, total_steps=total_steps, after_step=after_step,
                progress_log=progress_log)
        except NonFiniteLoss as error:
            raise NonFiniteLoss(f"{error}. Last good checkpoint: {saver.last_path()}") from None
        if stopped:
            logger.info(f"resume with --resume {saver.last_path()}")
            return 130
        metrics = meter.metrics(device)
        seconds = seconds_before + time.perf_counter() - start
        scheduler.step()
        result = evaluate(model, evaluation_loader, device, train_set.num_classes, amp=config["amp"],
                          channels_last=channels_last)
        is_best = result["acc"] > state["best_acc"]
        if is_best:
            state.update(best_acc=result["acc"], best_epoch=epoch + 1)
        row = epoch_row(epoch, lr, metrics, result, state, seconds, num_branches)
        for split, loader in extra_loaders.items():
            row[f"{split}_acc"] = evaluate(model, loader, device, train_set.num_classes, amp=config["amp"],
                                           channels_last=channels_last)["acc"]
        state["history"].append(row)
        state.update(epoch=epoch + 1, step=0, partial=None)
        saver.save_last(state)
        control.saved()
        if is_best:
            saver.save_best(state, result["confusion"])
        saver.report(state["history"], num_branches)
        logger.info(f"epoch {epoch + 1}/{config['epochs']}  lr {lr:.3g}  loss {metrics['loss']:.4f}  "
                    f"train {metrics['train_acc']:.2f}%  test {result['acc']:.2f}%  "
                    f"(mean class {result['mean_class_acc']:.2f}%, macro-F1 {result['macro_f1']:.2f}%)  "
                    f"best {state['best_acc']:.2f}% @ {state['best_epoch']}  {seconds:.1f}s"
                    + "".join(f"  {split} {row[f'{split}_acc']:.2f}%" for split in extra_loaders))
    if world_size > 1:
        in_sync = ddp.ranks_in_sync(model)
        logger.info(f"{world_size} ranks in sync: {'yes' if in_sync else 'NO'}")
        if not in_sync:
            return 1
    logger.info(f"done: best test accuracy {state['best_acc']:.2f}% at epoch {state['best_epoch']}; "
                f"run folder {run_dir}")
    return 0


def merge_resumed_config(config, checkpoint, args):
    saved = checkpoint.get("run_config") if isinstance(checkpoint, dict) else None
    if not saved or checkpoint.get("format") != "qcs-fer-checkpoint":
        raise UsageError(f"--resume {config['resume']} is not a training checkpoint of this project "
                         "(an authors' checkpoint can be evaluated with --evaluate)")
    script_arch = saved.get("recipe_arch", saved["arch"])
    if script_arch != config["recipe_arch"]:
        raise UsageError(f"--resume {config['resume']} is a {script_arch.upper()} run; "
                         f"continue it with main_{script_arch.upper()}.py")
    conflicts = sorted(k for k in args.given - RESUME_OVERRIDABLE if saved.get(k) != config[k])
    if conflicts:
        raise UsageError("a resumed run keeps its settings; these differ from the checkpoint: "
                         + ", ".join(f"--{k.replace('_', '-')} {config[k]} (saved: {saved.get(k)})"
                                     for k in conflicts))
    merged = {**config, **saved}  # settings added since the checkpoint was written keep their defaults
    for key in RESUME_OVERRIDABLE:
        merged[key] = config[key] if key in args.given or key == "resume" else merged.get(key)
    merged["output_dir"] = config["output_dir"] if "output_dir" in args.given else None
    return merged


def prepare_run_dir(config, resumed, rank):
    """Rank 0 creates (or, when resuming, reuses) the run folder; every rank learns its path."""
    run_dir = None
    if ddp.is_main_process():
        if resumed is not None:  # continue in the folder that holds the checkpoint, wherever it is now
            run_dir = Path(config["resume"]).resolve().parent
            if config["output_dir"] and Path(config["output_dir"]).resolve() != run_dir:
                run_dir = new_run_dir(config["output_dir"], "")
        else:
            run_dir = new_run_dir(config["output_dir"], f"{config['dataset']}-{config['arch']}")
        config["output_dir"] = str(run_dir)
        atomic_write_text(json.dumps(config, indent=2, default=str), run_dir / "config.json")
    return Path(ddp.broadcast_object(str(run_dir) if run_dir else None))


def load_pretrained(model, path):
    """`--pretrained`: fill the IR50 backbone, and only it, from `path`, before any run folder
    exists. Returns the line to log (None when there is nothing to say)."""
    if path in (None, "", "none"):
        return None
    if not Path(path).is_file():
        if path == str(DEFAULT_PRETRAINED) and model.config["size"] != "paper":
            return None
        if path != str(DEFAULT_PRETRAINED):
            raise FileNotFoundError(f"--pretrained {path} does not exist")
        return (f"warning: {path} not found; the IR50 backbone starts from random weights "
                "(expect far lower accuracy; see README, 'Pretrained IR50')")
    try:
        filled, source_format = load_backbone(model, path)
    except WeightsError as error:
        raise WeightsError(f"--pretrained {error}") from None
    return (f"backbone initialised from {path} ({source_format} weights): {filled} backbone "
            f"tensors filled; the rest of the network keeps its initialisation")


def restore_training(checkpoint, model, optimizer, scheduler):
    load_weights(model, checkpoint)
    optimizer.load_state_dict(checkpoint["optimizer"])
    scheduler.load_state_dict(checkpoint["scheduler"])
    set_rng_states(checkpoint["rng"])
    return dict(epoch=checkpoint["epoch"], step=checkpoint["step"], best_acc=checkpoint["best_acc"],
                best_epoch=checkpoint["best_epoch"], history=list(checkpoint["history"]),
                partial=checkpoint.get("partial"))


def epoch_row(epoch, lr, metrics, result, state, seconds, num_branches):
    losses = metrics["output_losses"]
    row = dict(epoch=epoch + 1, lr=lr, loss=metrics["loss"], train_acc=metrics["train_acc"],
               test_acc=result["acc"], mean_class_acc=result["mean_class_acc"],
               macro_f1=result["macro_f1"], best_acc=state["best_acc"], epoch_time_s=round(seconds, 2))
    for i, name in enumerate(loss_columns(num_branches)):
        row[name] = losses[i] if losses else float("nan")
    return row


class SkipFirst(torch.utils.data.Sampler):
    """The sampler's sequence without its first `count` items (resuming mid-epoch)."""

    def __init__(self, sampler, count):
        self.sampler, self.count = sampler, count

    def __iter__(self):
        iterator = iter(self.sampler)
        for _ in range(self.count):
            next(iterator, None)
        return iterator

    def __len__(self):
        return max(len(self.sampler) - self.count, 0)


class Saver:
    """Writes `last.pth`, `best.pth`, the metrics CSV and the plots (rank 0 only)."""

    def __init__(self, run_dir, model, optimizer, scheduler, config, classes):
        self.run_dir, self.model, self.optimizer, self.scheduler = run_dir, model, optimizer, scheduler
        self.config, self.classes = config, classes
        self.enabled = ddp.is_main_process()

    def last_path(self):
        return self.run_dir / "last.pth"

    def save_last(self, state):
        if self.enabled:
            atomic_save(self._checkpoint(state), self.last_path())

    def save_best(self, state, confusion):
        if not self.enabled:
            return
        atomic_save(self._checkpoint(state), self.run_dir / "best.pth")
        plot_confusion(self.run_dir / "confusion_best.png", confusion, self.classes,
                       f"{self.config['arch'].upper()} {self.config['dataset']}, epoch "
                       f"{state['best_epoch']}: {state['best_acc']:.2f}%")

    def report(self, history, num_branches):
        if self.enabled:
            write_metrics(self.run_dir / "metrics.csv", history, num_branches)
            plot_losses(self.run_dir / "losses.png", history, num_branches)

    def _checkpoint(self, state):
        return training_checkpoint(self.model, self.optimizer, self.scheduler, state,
                                   self.config, self.classes)

