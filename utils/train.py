"""Command line of `main_DCS.py` / `main_QCS.py`: train, resume and evaluate.

One training engine (`utils.engine`) serves both; the per-dataset differences are the
table in `utils.recipes`.
"""
import argparse
import json
import os
import signal
import sys
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset

from data_preprocessing import (DATASET_NAMES, DataError, GroupDataset, GroupSampler, build_dataset,
                                test_transform, train_transform)
from models import OPTION_CHOICES, WeightsError, build_model, load_weights, read_checkpoint

from . import distributed as ddp
from .checkpointing import atomic_save, atomic_write_text, new_run_dir, set_rng_states, training_checkpoint
from .engine import DeviceUnavailable, NonFiniteLoss, evaluate, resolve_device, timer, train_one_epoch
from .recipes import recipe
from .reporting import format_confusion, make_logger, plot_confusion, plot_losses, write_metrics
from .sam import SAM

DEFAULT_PRETRAINED = Path("models/pretrain/ir50.pth")
# Options a resumed run may change; everything else comes from the checkpoint.
RESUME_OVERRIDABLE = {"epochs", "workers", "device", "amp", "compile", "resume", "output_dir"}


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
    data.add_argument("--dataset", default="RAF-DB", choices=DATASET_NAMES)
    data.add_argument("--data-root", help="dataset folder (default: ./datas/<dataset>)")
    data.add_argument("--classes", help="comma-separated class names in label order (folder datasets)")
    data.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="DataLoader workers")
    data.add_argument("--balanced-sampler", action=argparse.BooleanOptionalAction, default=None,
                      help="class-balanced anchors (default: on for AffectNet only)")
    data.add_argument("--image-size", type=int, help="final image side (default 224; 112 for demo)")
    train = parser.add_argument_group("training (defaults: the dataset's released recipe)")
    train.add_argument("--epochs", type=int)
    train.add_argument("-b", "--batch-size", type=int, help="anchors per step and per process")
    train.add_argument("--lr", type=float)
    train.add_argument("--rho", type=float, default=0.05, help="SAM neighbourhood size")
    train.add_argument("--gamma", type=float, default=0.98, help="ExponentialLR decay per epoch")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--pretrained", default=str(DEFAULT_PRETRAINED),
                       help="face-recognition IR50 weights for the backbone ('none' to skip)")
    model = parser.add_argument_group("model (ablations of the paper)")
    model.add_argument("--size", choices=OPTION_CHOICES["size"], help="model size (default paper; tiny for demo)")
    model.add_argument("--attention", default="csa", choices=OPTION_CHOICES["attention"])
    model.add_argument("--matrix", default="sd", choices=OPTION_CHOICES["matrix"], help="QCS: S/D terms")
    model.add_argument("--connection", default="vit", choices=OPTION_CHOICES["connection"])
    model.add_argument("--drop", type=float, help="base ViT dropout")
    model.add_argument("--cross-drop", type=float, help="cross ViT dropout")
    model.add_argument("--proj-drop-rule", default="auto", choices=OPTION_CHOICES["proj_drop_rule"])
    model.add_argument("--distill", default="none", choices=("none", "kl", "mse"),
                       help="extra base-vs-cross logit loss")
    model.add_argument("--distill-weight", type=float, default=1.0)
    model.add_argument("--temperature", type=float, default=1.0)
    run = parser.add_argument_group("run")
    run.add_argument("--output-dir", help="run folder (default: log/<dataset>-<arch>-<time>); must be new")
    run.add_argument("--resume", metavar="CKPT", help="continue the run saved in CKPT (its last.pth)")
    run.add_argument("--evaluate", metavar="CKPT",
                     help="evaluate CKPT (ours or the authors') on the test split and exit")
    run.add_argument("--predictions", metavar="FILE.csv", help="with --evaluate: per-image logits")
    run.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    run.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA)")
    run.add_argument("--compile", action="store_true", help="torch.compile the model")
    run.add_argument("--checkpoint-backbone", action="store_true",
                     help="recompute backbone activations in backward (less memory)")
    return parser


def main(arch, argv=None):
    """Entry point of `main_DCS.py` (`arch="dcs"`) and `main_QCS.py` (`arch="qcs"`)."""
    args = build_parser(arch).parse_args(argv)
    logger = make_logger(enabled=True)
    try:
        if args.evaluate:
            return run_evaluation(arch, args, logger)
        previous_handler = signal.getsignal(signal.SIGINT)
        try:
            return run_training(arch, args)
        finally:
            signal.signal(signal.SIGINT, previous_handler)
    except (UsageError, DataError, WeightsError, DeviceUnavailable, FileExistsError, FileNotFoundError) as error:
        logger.error(f"error: {error}")
        return 2
    except NonFiniteLoss as error:
        logger.error(f"stopped: {error}")
        return 1
    finally:
        ddp.cleanup()


def resolve_config(arch, args):
    """Command-line values, with the dataset's recipe filling everything left unset."""
    if args.resume and args.evaluate:
        raise UsageError("--resume and --evaluate cannot be used together")
    if args.predictions and not args.evaluate:
        raise UsageError("--predictions is only used with --evaluate")
    config = {k: v for k, v in vars(args).items()}
    defaults = recipe(arch, args.dataset)
    for key in ("epochs", "batch_size", "lr", "drop", "cross_drop", "size", "image_size", "balanced_sampler"):
        if config[key] is None:
            config[key] = defaults[key]
    config["augmentation"] = defaults["augmentation"]
    config["arch"] = arch
    for key in ("epochs", "batch_size", "workers"):
        if config[key] < (0 if key == "workers" else 1):
            raise UsageError(f"--{key.replace('_', '-')} must be positive, got {config[key]}")
    return config


def model_from_config(config, arch=None):
    return build_model(arch or config["arch"], config["num_classes"], size=config["size"],
                       attention=config["attention"], matrix=config["matrix"],
                       connection=config["connection"], drop=config["drop"],
                       cross_drop=config["cross_drop"], proj_drop_rule=config["proj_drop_rule"],
                       checkpoint_backbone=config["checkpoint_backbone"])


def transforms_for(config):
    aug = dict(config["augmentation"])
    size = config["image_size"]
    test_resize = aug.get("resize") if aug["kind"] == "B" else None
    return train_transform(**aug, size=size), test_transform(resize=test_resize, size=size)


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
                      persistent_workers=False)


# ------------------------------------------------------------------------------------ evaluate

def run_evaluation(arch, args, logger):
    """`--evaluate CKPT`: base branch on the test split; accuracy, mean class accuracy, confusion."""
    config = resolve_config(arch, args)
    device = resolve_device(config["device"])
    rank, world_size, _ = ddp.init_distributed(device.type)
    if config["predictions"] and Path(config["predictions"]).exists():
        raise FileExistsError(f"--predictions {config['predictions']} exists; refusing to overwrite it")
    checkpoint = read_checkpoint(config["evaluate"])
    saved = checkpoint.get("run_config") if isinstance(checkpoint, dict) else None
    if saved:  # our checkpoint: evaluate as it was trained unless told otherwise
        for key in ("size", "image_size", "augmentation"):
            config[key] = saved[key] if getattr(args, key, None) is None else config[key]
    _, transform = transforms_for(config)
    dataset = load_data(config, "test", transform)
    config["num_classes"] = dataset.num_classes
    model = model_from_config(config, arch="base")
    report = load_weights(model, checkpoint)
    logger.info(f"loaded {config['evaluate']} ({report.summary()})")
    model.to(device)
    result = evaluate(model, test_loader(dataset, config, device, rank, world_size), device,
                      dataset.num_classes, amp=config["amp"], keep_logits=bool(config["predictions"]))
    if ddp.is_main_process():
        logger.info(f"test accuracy {result['acc']:.2f}%  mean class accuracy "
                    f"{result['mean_class_acc']:.2f}%  ({len(dataset)} images)")
        logger.info("confusion matrix (rows: true, columns: predicted)\n"
                    + format_confusion(result["confusion"], dataset.classes))
        if config["predictions"]:
            write_predictions(config["predictions"], dataset, result["logits"])
            logger.info(f"wrote {config['predictions']}")
    return 0


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

class StopFlag:
    """Set by the first Ctrl-C: finish the step, write a resumable `last.pth`, exit."""

    def __init__(self):
        self.requested = False

    def __call__(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\ninterrupt: finishing this step and writing last.pth (Ctrl-C again to abort)",
              file=sys.stderr)


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
    num_branches = 4 if arch == "qcs" else 2
    sampler = GroupSampler(train_set.labels, num_branches, seed=config["seed"],
                           balanced=config["balanced_sampler"], num_replicas=world_size, rank=rank)

    model = model_from_config(config)
    run_dir = prepare_run_dir(config, resumed, rank)
    logger = make_logger(run_dir, enabled=ddp.is_main_process())
    if resumed is None:
        load_pretrained(model, config["pretrained"], logger)
    model.to(device)
    channels_last = device.type == "cuda"
    if channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = SAM(model.parameters(), torch.optim.Adam, rho=config["rho"], lr=config["lr"],
                    betas=(0.9, 0.999), weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer.base_optimizer, gamma=config["gamma"])
    state = dict(epoch=0, step=0, best_acc=0.0, best_epoch=0, history=[])
    if resumed is not None:
        state = restore_training(resumed, model, optimizer, scheduler)
        logger.info(f"resumed {config['resume']} at epoch {state['epoch'] + 1}, step {state['step']}")
    train_model = model
    if world_size > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if config["compile"]:
        train_model = torch.compile(train_model)

    logger.info(f"{arch.upper()} on {config['dataset']}: {len(train_set)} train / {len(test_set)} test "
                f"images, {train_set.num_classes} classes, {world_size} process(es) on {device}; "
                f"run folder {run_dir}")
    stop = StopFlag()
    signal.signal(signal.SIGINT, stop)
    loader_args = dict(num_workers=config["workers"], pin_memory=device.type == "cuda",
                       persistent_workers=config["workers"] > 0)
    train_loader = DataLoader(GroupDataset(train_set), batch_size=config["batch_size"],
                              sampler=sampler, **loader_args)
    evaluation_loader = test_loader(test_set, config, device, rank, world_size)
    loss_options = dict(distill=config["distill"], distill_weight=config["distill_weight"],
                        temperature=config["temperature"])
    saver = Saver(run_dir, model, optimizer, scheduler, config, train_set.classes)

    for epoch in range(state["epoch"], config["epochs"]):
        sampler.set_epoch(epoch)
        loader = train_loader
        if state["step"]:
            loader = DataLoader(GroupDataset(train_set), batch_size=config["batch_size"],
                                sampler=SkipFirst(sampler, state["step"] * config["batch_size"]),
                                **{**loader_args, "persistent_workers": False})
        lr = optimizer.param_groups[0]["lr"]
        with timer() as clock:
            try:
                metrics = train_one_epoch(
                    train_model, loader, optimizer, device, epoch, loss_options, amp=config["amp"],
                    channels_last=channels_last, image_names=train_set.image_names,
                    should_stop=lambda: stop.requested, total_steps=len(loader) + state["step"],
                    first_step=state["step"])
            except NonFiniteLoss as error:
                raise NonFiniteLoss(f"{error}. Last good checkpoint: {saver.last_path()}") from None
        if metrics["interrupted"]:
            state.update(epoch=epoch, step=metrics["steps"])
            saver.save_last(state)
            logger.info(f"interrupted at epoch {epoch + 1}, step {metrics['steps']}; resume with "
                        f"--resume {run_dir / 'last.pth'}")
            return 130
        scheduler.step()
        result = evaluate(model, evaluation_loader, device, train_set.num_classes, amp=config["amp"],
                          channels_last=channels_last)
        is_best = result["acc"] > state["best_acc"]
        if is_best:
            state.update(best_acc=result["acc"], best_epoch=epoch + 1)
        state["history"].append(epoch_row(epoch, lr, metrics, result, state, clock.seconds, num_branches))
        state.update(epoch=epoch + 1, step=0)
        saver.save_last(state)
        if is_best:
            saver.save_best(state, result["confusion"])
        saver.report(state["history"], num_branches)
        logger.info(f"epoch {epoch + 1}/{config['epochs']}  lr {lr:.3g}  loss {metrics['loss']:.4f}  "
                    f"train {metrics['train_acc']:.2f}%  test {result['acc']:.2f}%  "
                    f"(mean class {result['mean_class_acc']:.2f}%)  best {state['best_acc']:.2f}% "
                    f"@ {state['best_epoch']}  {clock.seconds:.1f}s")
        if stop.requested:
            logger.info(f"interrupted after epoch {epoch + 1}; resume with --resume {run_dir / 'last.pth'}")
            return 130
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
    if saved["arch"] != config["arch"]:
        raise UsageError(f"--resume {config['resume']} is a {saved['arch'].upper()} run; "
                         f"use main_{saved['arch'].upper()}.py")
    parser = build_parser(config["arch"])
    explicit = {k for k, v in vars(args).items() if v is not None and v != parser.get_default(k)}
    conflicts = sorted(k for k in explicit - RESUME_OVERRIDABLE if saved.get(k) != config[k])
    if conflicts:
        raise UsageError("a resumed run keeps its settings; these differ from the checkpoint: "
                         + ", ".join(f"--{k.replace('_', '-')}" for k in conflicts))
    merged = dict(saved)
    for key in RESUME_OVERRIDABLE:
        if key in explicit or key == "resume":
            merged[key] = config[key]
    return merged


def prepare_run_dir(config, resumed, rank):
    """Rank 0 creates (or, when resuming, reuses) the run folder; every rank learns its path."""
    run_dir = None
    if ddp.is_main_process():
        if resumed is not None:
            run_dir = Path(config["output_dir"] or Path(config["resume"]).parent)
            if config["output_dir"] and Path(config["output_dir"]) != Path(config["resume"]).parent:
                run_dir = new_run_dir(config["output_dir"], "")
        else:
            run_dir = new_run_dir(config["output_dir"], f"{config['dataset']}-{config['arch']}")
        config["output_dir"] = str(run_dir)
        atomic_write_text(json.dumps(config, indent=2, default=str), run_dir / "config.json")
    return Path(ddp.broadcast_object(str(run_dir) if run_dir else None))


def load_pretrained(model, path, logger):
    if path in (None, "", "none"):
        return
    if not Path(path).is_file():
        if path == str(DEFAULT_PRETRAINED) and model.config["size"] != "paper":
            return
        if path != str(DEFAULT_PRETRAINED):
            raise FileNotFoundError(f"--pretrained {path} does not exist")
        logger.warning(f"warning: {path} not found; the IR50 backbone starts from random weights "
                       "(expect far lower accuracy; see README, 'Pretrained IR50')")
        return
    report = load_weights(model, path)
    logger.info(f"backbone initialised from {path} ({report.summary()})")


def restore_training(checkpoint, model, optimizer, scheduler):
    load_weights(model, checkpoint)
    optimizer.load_state_dict(checkpoint["optimizer"])
    scheduler.load_state_dict(checkpoint["scheduler"])
    set_rng_states(checkpoint["rng"])
    return dict(epoch=checkpoint["epoch"], step=checkpoint["step"], best_acc=checkpoint["best_acc"],
                best_epoch=checkpoint["best_epoch"], history=list(checkpoint["history"]))


def epoch_row(epoch, lr, metrics, result, state, seconds, num_branches):
    losses = metrics["branch_losses"]
    row = dict(epoch=epoch + 1, lr=lr, loss=metrics["loss"], train_acc=metrics["train_acc"],
               test_acc=result["acc"], mean_class_acc=result["mean_class_acc"],
               best_acc=state["best_acc"], epoch_time_s=round(seconds, 2))
    for i in range(num_branches):
        row[f"loss_base_{i + 1}"] = losses[i] if losses else float("nan")
        row[f"loss_cross_{i + 1}"] = losses[num_branches + i] if losses else float("nan")
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

