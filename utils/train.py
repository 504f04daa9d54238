"""`main_DCS.py` / `main_QCS.py`: set up a run, then train it epoch by epoch (or evaluate a checkpoint).

The options and the per-dataset recipe are resolved in `utils.config`, the data comes from
`utils.training_data`, one epoch is trained and evaluated by `utils.engine`, the run folder is
created, locked and continued by `utils.run_folder`, checkpoints are written by
`utils.checkpointing`, and signals and mid-epoch saves are handled by `utils.runtime`.
"""
from dataclasses import dataclass
from types import SimpleNamespace

import torch

from data_preprocessing import DataError
from data_preprocessing.outputs import OutputError
from models import ARCHS, WeightsError

from . import distributed as ddp
from .checkpointing import Saver, load_pretrained, restore_training
from .config import UsageError, model_from_config, parse_args, resolve_config
from .device import DeviceUnavailable, place_model, resolve_device, use_channels_last
from .engine import NonFiniteLoss, ProgressLog, evaluate, train_one_epoch
from .evaluation import run_evaluation
from .inference import CheckpointError
from .metrics import EpochMeter
from .reporting import epoch_row, make_logger
from .run_folder import discard_failed_start, prepare_run_dir, read_resume_source, release_run_dirs
from .runtime import MidEpochSaver, RunControl, signals_handled_by
from .sam import SAM
from .schedule import LinearWarmup
from .training_data import epoch_loader, load_training_data

# Errors in what the user gave (options, files, data): one line and exit status 2.
USER_ERRORS = (UsageError, DataError, WeightsError, CheckpointError, DeviceUnavailable, OutputError,
               FileExistsError, FileNotFoundError)


def main(arch, argv=None):
    """Entry point of `main_DCS.py` (`arch="dcs"`) and `main_QCS.py` (`arch="qcs"`)."""
    args = parse_args(arch, argv)
    logger = make_logger(enabled=True)
    try:
        if args.evaluate:
            return run_evaluation(arch, args, logger)
        return run_training(arch, args)
    except USER_ERRORS as error:
        logger.error(f"error: {error}")
        return 2
    except NonFiniteLoss as error:
        logger.error(f"stopped: {error}")
        return 1
    except KeyboardInterrupt:
        logger.error("interrupted")
        return 130
    finally:
        release_run_dirs()
        ddp.cleanup()


@dataclass
class Run:
    """Everything one training run holds between epochs."""
    config: dict
    device: torch.device
    world_size: int
    data: SimpleNamespace  # train_set, sampler, train_loader, loader_args, device_augment, test_loader, ...
    model: torch.nn.Module  # the network itself, as saved and evaluated
    train_model: torch.nn.Module  # the same network as trained (DDP- and/or compile-wrapped)
    optimizer: SAM
    scheduler: torch.optim.lr_scheduler.LRScheduler
    saver: Saver
    logger: object
    state: dict  # epoch, step, best_acc, best_epoch, history, partial (a mid-epoch save's sums)
    channels_last: bool
    created: bool  # this process created the run folder (and removes it if nothing gets saved)

    @property
    def num_branches(self):
        return ARCHS[self.config["arch"]]


def run_training(arch, args):
    """Train (or continue) a run; returns the exit status (130 when stopped by a signal)."""
    run = set_up_run(arch, args)
    try:
        return train_epochs(run)
    except BaseException:
        if discard_failed_start(run.saver.run_dir, run.created):
            run.logger.info(f"removed the run folder {run.saver.run_dir}: nothing had been saved in it")
        raise
    finally:
        run.saver.close(run.state["history"])


def train_epochs(run):
    """The loop over the run's remaining epochs."""
    control = RunControl(run.config["save_every"], run.device)
    step_saver = MidEpochSaver(control, run.saver, run.logger, run.device)
    with signals_handled_by(control):
        for epoch in range(run.state["epoch"], run.config["epochs"]):
            metrics, stopped = train_epoch(run, epoch, step_saver)
            if stopped:
                run.logger.info(f"resume with --resume {run.saver.last_path()}")
                return 130
            end_epoch(run, epoch, metrics, step_saver.seconds())
            control.saved()
    return finish(run)


def set_up_run(arch, args):
    """Resolve the settings, load the data, build or restore the model and create the run folder."""
    config = resolve_config(arch, args)
    config, resumed, resume = read_resume_source(config, args.given) if config["resume"] else (config, None, None)
    device = resolve_device(config["device"])
    rank, world_size, local_rank = ddp.init_distributed(device.type)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
    torch.manual_seed(config["seed"] + rank)
    data = load_training_data(config, device, rank, world_size)
    config["num_classes"] = data.train_set.num_classes
    model = model_from_config(config)
    pretrained_note = load_pretrained(model, config["pretrained"]) if resumed is None else None
    run_dir, created = prepare_run_dir(config, resume)
    try:
        return start_run(config, resumed, data, model, device, world_size, run_dir, created, pretrained_note)
    except BaseException:
        discard_failed_start(run_dir, created)
        raise


def start_run(config, resumed, data, model, device, world_size, run_dir, created, pretrained_note):
    """The run's logger, optimiser, schedule and counters, restored when resuming."""
    logger = make_logger(run_dir, enabled=ddp.is_main_process())
    if config.get("replayed_from"):
        logger.info(f"settings replayed from {config['replayed_from']}, except those given on the command "
                    f"line: {', '.join(config['replay_overrides']) or 'none'}")
    if pretrained_note:
        logger.info(pretrained_note)
    channels_last = use_channels_last(config["channels_last"], device)
    place_model(model, device, channels_last)
    optimizer = SAM(model.parameters(), torch.optim.Adam, rho=config["rho"], lr=config["lr"],
                    betas=(0.9, 0.999), weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer.base_optimizer, gamma=config["gamma"])
    state = dict(epoch=0, step=0, best_acc=0.0, best_epoch=0, test_at_best=0.0, history=[], partial=None)
    if resumed is not None:
        state = restore_training(resumed, model, optimizer, scheduler)
        where = "into the new run folder" if created else "in its run folder"
        logger.info(f"resumed {config['resume']} at epoch {state['epoch'] + 1}, step {state['step']}, {where}")
    saver = Saver(run_dir, model, optimizer, scheduler, config, data.train_set.classes)
    run = Run(config, device, world_size, data, model, wrap_for_training(model, config, device, world_size),
              optimizer, scheduler, saver, logger, state, channels_last, created)
    name = "baseline (base branch alone)" if config["arch"] == "base" else config["arch"].upper()
    logger.info(f"{name} on {config['dataset']}: {len(data.train_set)} train / "
                f"{len(data.test_loader.dataset)} test images, {data.train_set.num_classes} classes, "
                f"{world_size} process(es) on {device}; run folder {run_dir}")
    return run


def wrap_for_training(model, config, device, world_size):
    """The model as trained: DDP across processes, then `torch.compile` when asked."""
    if world_size > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if config["compile"]:
        model = torch.compile(model, backend=config["compile_backend"])
    return model


def train_epoch(run, epoch, step_saver):
    """Train epoch `epoch` (0-based) from where the run stands; returns `(metrics, stopped)`."""
    config, state = run.config, run.state
    run.data.sampler.set_epoch(epoch)
    first_step, partial = state["step"], state["partial"] or {}
    loader = epoch_loader(run.data, run.config, first_step)
    meter = EpochMeter(partial if ddp.is_main_process() else None)  # ranks' sums are added: count once
    total_steps = len(loader) + first_step
    step_saver.start_epoch(state, epoch, first_step, total_steps, partial.get("seconds", 0.0))
    progress_log = ProgressLog(run.logger, config["print_freq"], epoch, config["epochs"], total_steps, first_step,
                               run.optimizer, config["batch_size"] * run.num_branches * run.world_size)
    loss_options = dict(distill=config["distill"], distill_weight=config["distill_weight"],
                        temperature=config["temperature"])
    try:
        _, stopped = train_one_epoch(
            run.train_model, loader, run.optimizer, run.device, epoch, loss_options, amp=config["amp"],
            channels_last=run.channels_last, image_names=run.data.train_set.image_names, meter=meter,
            first_step=first_step, total_steps=total_steps, after_step=step_saver, progress_log=progress_log,
            augment=run.data.device_augment,
            warmup=LinearWarmup(run.optimizer, round(config["warmup_epochs"] * total_steps)))
    except NonFiniteLoss as error:
        last = run.saver.last_path()
        raise NonFiniteLoss(f"{error}. " + (f"Last good checkpoint: {last}" if last.exists()
                                            else "No checkpoint had been saved yet")) from None
    except DataError as error:
        saved = run.world_size == 1 and step_saver.save_progress()
        last = run.saver.last_path()
        if not last.exists():
            raise DataError(f"{error} (no checkpoint had been saved yet)") from None
        raise DataError(f"{error} ({'progress saved; ' if saved else ''}resume with --resume {last} "
                        "once the data is fixed)") from None
    return (None if stopped else meter.metrics(run.device)), stopped


def evaluate_test_splits(run):
    """The base branch on the test split, and the accuracy on each extra split (the validation
    split, as `val`, with `--select-on val`)."""
    options = dict(amp=run.config["amp"], channels_last=run.channels_last, tta=run.config["tta"])
    num_classes = run.data.train_set.num_classes
    result = evaluate(run.model, run.data.test_loader, run.device, num_classes, **options)
    loaders = {**run.data.extra_loaders, **({"val": run.data.val_loader} if run.data.val_loader else {})}
    extra = {split: evaluate(run.model, loader, run.device, num_classes, **options)["acc"]
             for split, loader in loaders.items()}
    return result, extra


def end_epoch(run, epoch, metrics, seconds):
    """Step the schedule, evaluate, and write last.pth, best.pth (on a new best) and the reports."""
    state, on_val = run.state, run.config["select_on"] == "val"
    lr = run.optimizer.param_groups[0]["lr"]
    run.scheduler.step()
    result, extra = evaluate_test_splits(run)
    chosen = extra["val"] if on_val else result["acc"]
    is_best = state["best_epoch"] == 0 or chosen > state["best_acc"]  # the first epoch is a best
    if is_best:
        state.update(best_acc=chosen, best_epoch=epoch + 1, test_at_best=result["acc"])
    row = epoch_row(epoch, lr, metrics, result, state, seconds, run.num_branches)
    row.update({f"{split}_acc": acc for split, acc in extra.items()})
    row.update({"test_at_best": state["test_at_best"]} if on_val else {})
    row.update({"tta": run.config["tta"]} if run.config["tta"] != "none" else {})
    state["history"].append(row)
    state.update(epoch=epoch + 1, step=0, partial=None)
    run.saver.save_last(state)
    if is_best:
        run.saver.save_best(state, result["confusion"])
    run.saver.report(state["history"], run.num_branches)
    run.logger.info(f"epoch {epoch + 1}/{run.config['epochs']}  lr {lr:.3g}  loss {metrics['loss']:.4f}  "
                    f"train {metrics['train_acc']:.2f}%  test {result['acc']:.2f}%  "
                    f"(mean class {result['mean_class_acc']:.2f}%, macro-F1 {result['macro_f1']:.2f}%)  "
                    f"{best_summary(run)}  {seconds:.1f}s"
                    + "".join(f"  {split} {acc:.2f}%" for split, acc in extra.items())
                    + ("  (flip TTA)" if run.config["tta"] == "flip" else ""))


def best_summary(run):
    """`best 71.20% @ 3`, or with `--select-on val`: `best val 70.10% @ 3 (test 71.20%)`."""
    state = run.state
    if run.config["select_on"] != "val":
        return f"best {state['best_acc']:.2f}% @ {state['best_epoch']}"
    return f"best val {state['best_acc']:.2f}% @ {state['best_epoch']} (test {state['test_at_best']:.2f}%)"


def finish(run):
    """The final lines of a run that trained all its epochs; 1 when DDP ranks disagree."""
    if run.world_size > 1:
        in_sync = ddp.ranks_in_sync(run.model)
        run.logger.info(f"{run.world_size} ranks in sync: {'yes' if in_sync else 'NO'}")
        if not in_sync:
            return 1
    state = run.state
    chosen = (f"best validation accuracy {state['best_acc']:.2f}% at epoch {state['best_epoch']}, test accuracy "
              f"there {state['test_at_best']:.2f}%" if run.config["select_on"] == "val" else
              f"best test accuracy {state['best_acc']:.2f}% at epoch {state['best_epoch']}")
    run.logger.info(f"done: {chosen}; run folder {run.saver.run_dir}")
    return 0
