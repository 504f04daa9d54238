"""`main_DCS.py` / `main_QCS.py`: set up a run, then train it epoch by epoch (or evaluate a checkpoint).

One training step, top to bottom: `main` → `run_training` → `train_epochs` → `train_epoch` →
`engine.train_one_epoch` → `engine.sam_step` → `SAM.first_step` / `SAM.second_step` (utils/sam.py).
The settings come from `utils.config`, the data from `utils.data`, the run folder from
`utils.run_folder`, checkpoints from `utils.training_state` (writing) and `utils.resume` (`--resume`,
`--pretrained`), the other files of a run from `utils.reporting`.
"""
import re
import time
import warnings
from dataclasses import dataclass

import torch

from data_preprocessing import DataError
from data_preprocessing.outputs import OutputError
from models.architectures import architecture

from . import distributed as ddp
from .checkpoint import CheckpointError
from .config import UsageError, model_from_config, parse_args, resolve_settings
from .data import RunData, epoch_loader, load_training_data
from .device import DeviceUnavailable, place_model, resolve_device, use_channels_last
from .engine import NonFiniteLoss, StepSettings, evaluate, train_one_epoch
from .evaluation import run_evaluation
from .metrics import EpochMeter
from .recipes import fallback_note
from .reporting import RunReport, epoch_row, log_into, make_logger
from .resume import load_pretrained, restore_training
from .run_folder import (
    NewFolder,
    RunFolderLocks,
    Taken,
    discard_failed_start,
    prepare_run_dir,
    read_resume_source,
    unfinished_epoch_end,
)
from .runtime import RunControl, kill_worker_processes, signals_handled_by
from .sam import SAM
from .settings import RunSettings
from .training_state import RunState, Saver, rng_states, set_rng_states

# Errors in what the user gave (options, files, data): one line and exit status 2.
USER_ERRORS = (UsageError, DataError, CheckpointError, DeviceUnavailable, OutputError, FileExistsError,
               FileNotFoundError)


def main(arch, argv=None):
    """Entry point of `main_DCS.py` (`arch="dcs"`) and `main_QCS.py` (`arch="qcs"`)."""
    args = parse_args(arch, argv)
    logger, locks = make_logger(enabled=True), RunFolderLocks()
    try:
        if args.evaluate:
            return run_evaluation(arch, args, logger)
        return run_training(arch, args, logger, locks)
    except USER_ERRORS as error:
        logger.error(f"error: {error}")
        return 2
    except NonFiniteLoss as error:
        logger.error(f"stopped: {error}")
        return 1
    except KeyboardInterrupt as error:
        kill_worker_processes()
        logger.error(f"interrupted: {error}" if str(error) else "interrupted")
        return 130
    finally:
        locks.release()
        ddp.cleanup()


@dataclass
class Run:
    """Everything one training run holds between epochs."""
    settings: RunSettings
    device: torch.device
    world_size: int
    data: RunData
    model: torch.nn.Module  # the network itself, as saved and evaluated
    train_model: torch.nn.Module  # the same network as trained (DDP- and/or compile-wrapped)
    optimizer: SAM
    scheduler: torch.optim.lr_scheduler.LRScheduler
    saver: Saver  # last.pth and best.pth
    report: RunReport  # metrics.csv, the figures, TensorBoard
    logger: object
    state: RunState
    step_settings: StepSettings
    new_folder: NewFolder | None  # the folder this process took for the run (undone if nothing gets saved)

    @property
    def num_branches(self):
        return architecture(self.settings.arch).branches


def run_training(arch, args, logger, locks):
    """Train (or continue) a run, its folder locked into `locks`; returns the exit status (130 when
    stopped by a signal)."""
    run = set_up_run(arch, args, logger, locks)
    try:
        return train_epochs(run)
    except BaseException:
        undone = discard_failed_start(run.saver.run_dir, run.new_folder, locks)
        if undone:
            run.logger.info(f"{undone} the run folder {run.saver.run_dir}: nothing had been saved in it")
        raise
    finally:
        run.report.close(run.state.history)


def train_epochs(run):
    """The loop over the run's remaining epochs."""
    control = RunControl(run.settings.save_every, run.device)
    with signals_handled_by(control):
        complete_epoch_end(run)
        for epoch in range(run.state.epoch, run.settings.epochs):
            progress = EpochProgress(run, control, epoch)
            metrics, stopped = train_epoch(run, epoch, progress)
            if stopped:
                run.logger.info(f"resume with --resume {run.saver.last_path()}")
                return 130
            end_epoch(run, epoch, metrics, progress)
            control.saved()
    return finish(run)


def set_up_run(arch, args, logger, locks):
    """Resolve the settings, load the data, build or restore the model and create the run folder."""
    settings = resolve_settings(arch, args)
    settings, resumed, resume = read_resume_source(settings, args.given) if settings.resume else (settings, None, None)
    device = resolve_device(settings.device)
    rank, world_size, local_rank = ddp.init_distributed(device.type)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
    torch.manual_seed(settings.seed + rank)
    data = load_training_data(settings, device, rank, world_size)
    settings.num_classes = data.train_set.num_classes
    model = model_from_config(settings)
    pretrained_note = load_pretrained(model, settings.pretrained) if resumed is None else None
    run_dir, new_folder = prepare_run_dir(settings, locks, resume)
    try:
        return start_run(settings, resumed, data, model, device, world_size, run_dir, new_folder, pretrained_note,
                         logger)
    except BaseException:
        discard_failed_start(run_dir, new_folder, locks)
        raise


def start_run(settings, resumed, data, model, device, world_size, run_dir, new_folder, pretrained_note, logger):
    """The run's optimiser, schedule and counters, restored when resuming; `logger` now also writes
    the run folder's log."""
    log_into(logger, run_dir, enabled=ddp.is_main_process())
    if settings.replayed_from and resumed is None:
        logger.info(f"settings replayed from {settings.replayed_from}, except those given on the command "
                    f"line: {', '.join(settings.replay_overrides) or 'none'}")
    for note in (fallback_note(settings), pretrained_note):
        if note:
            logger.info(note)
    if new_folder is not None and new_folder.taken == Taken.RESTARTED:
        logger.info(f"took the run folder {run_dir} again: its run had stopped before it saved an epoch")
    channels_last = use_channels_last(settings.channels_last, device)
    place_model(model, device, channels_last)
    optimizer = SAM(model.parameters(), torch.optim.Adam, rho=settings.rho, lr=settings.lr,
                    betas=(0.9, 0.999), weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer.base_optimizer, gamma=settings.gamma)
    state = RunState()
    if resumed is not None:
        state = restore_training(resumed, model, optimizer, scheduler)
        where = "into the new run folder" if new_folder else "in its run folder"
        regrouped = (f" (saved by {state.world_size} process(es), continued by {world_size}: the epoch goes on "
                     "with the groups none of them trained)" if state.step and state.world_size != world_size else "")
        logger.info(f"resumed {settings.resume} at epoch {state.epoch + 1}, step {state.step}, {where}{regrouped}")
    state.world_size = world_size
    classes = data.train_set.classes
    step_settings = StepSettings(
        loss_options=dict(distill=settings.distill, distill_weight=settings.distill_weight,
                          temperature=settings.temperature),
        amp=settings.amp, channels_last=channels_last, augment=data.device_augment,
        image_names=data.train_set.image_names, logger=logger, print_freq=settings.print_freq,
        epochs=settings.epochs,
        images_per_step=settings.batch_size * architecture(settings.arch).branches * world_size)
    run = Run(settings, device, world_size, data, model, wrap_for_training(model, settings, device, world_size),
              optimizer, scheduler, Saver(run_dir, model, optimizer, scheduler, settings, classes),
              RunReport(run_dir, settings, classes, logger, enabled=ddp.is_main_process()), logger, state,
              step_settings, new_folder)
    if settings.tensorboard:
        logger.info(f"TensorBoard event files go into {run_dir / 'tensorboard'} "
                    f"(view them with: tensorboard --logdir {run_dir})")
    arch = architecture(settings.arch)
    name = arch.title if arch.cross else f"{arch.title} (base branch alone)"
    logger.info(f"{name} on {settings.dataset}: {len(data.train_set)} train / "
                f"{len(data.test_loader.dataset)} test images, {data.train_set.num_classes} classes, "
                f"{world_size} process(es) on {device}; run folder {run_dir}")
    return run


def wrap_for_training(model, settings, device, world_size):
    """The model as trained: DDP across processes, then `torch.compile` when asked."""
    if world_size > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if settings.compile:
        model = torch.compile(model, backend=settings.compile_backend)
    return model


class EpochProgress:
    """How far one epoch has got (steps, sums, seconds, the groups all ranks trained), kept as a
    resumable `last.pth` on an agreed stop or a due save. Called after each step (the engine's
    `after_step`), it says whether the epoch must end now."""

    def __init__(self, run, control, epoch):
        state = run.state
        self.run, self.control, self.epoch = run, control, epoch
        self.first_step = self.step = self.saved_step = state.step
        self.groups_per_step = run.settings.batch_size * run.world_size
        # a file that does not record it: each rank trained `step` full batches of its own share
        self.first_groups = state.step * self.groups_per_step if state.groups_done is None else state.groups_done
        self.seconds_before = (state.epoch_sums or {}).get("seconds", 0.0)
        self.start, self.meter = time.perf_counter(), None

    def groups_done(self):
        """The epoch's groups trained so far by all ranks together: always its first ones."""
        return self.first_groups + (self.step - self.first_step) * self.groups_per_step

    def seconds(self):
        """Training seconds of this epoch so far, including those before a resume."""
        return self.seconds_before + time.perf_counter() - self.start

    def __call__(self, step, meter):
        self.step, self.meter = step, meter
        stop, save = self.control.decide()
        if stop or save:
            self._save()
            self.run.logger.info(f"{'interrupted' if stop else 'saved'} at epoch {self.epoch + 1}, step {step}/"
                                 f"{len(self.run.data.train_loader)}: {self.run.saver.last_path()}")
        return stop

    def save_progress(self):
        """Save the steps trained since the last save, if any (after a failure that ends the epoch;
        single-process runs only: the sums are gathered with a collective). Returns whether it saved."""
        if self.meter is None or self.step == self.saved_step:
            return False
        self._save()
        return True

    def _save(self):
        sums = dict(self.meter.global_state(self.run.device), seconds=self.seconds())
        by_rank = ddp.gather_objects(self.meter.local_state())  # a collective: every rank takes part
        if len(by_rank) > 1:
            sums["by_rank"] = by_rank
        state = self.run.state
        state.epoch, state.step, state.epoch_sums, state.groups_done = self.epoch, self.step, sums, self.groups_done()
        self.run.saver.save(state)
        self.control.saved()
        self.saved_step = self.step


def train_epoch(run, epoch, progress):
    """Train epoch `epoch` (0-based) from where `progress` stands; returns `(metrics, stopped)`."""
    state = run.state
    run.data.sampler.set_epoch(epoch, progress.groups_done())
    loader = epoch_loader(run.data, state.step)
    meter = EpochMeter(own_epoch_sums(state, run.world_size), steps=state.step)
    try:
        _, stopped = train_one_epoch(run.train_model, loader, run.optimizer, run.device, epoch, run.step_settings,
                                     meter, after_step=progress)
    except NonFiniteLoss as error:
        last = run.saver.last_path()
        raise NonFiniteLoss(f"{error}. " + (f"Last good checkpoint: {last}" if last.exists()
                                            else "No checkpoint had been saved yet")) from None
    except (torch.OutOfMemoryError, RuntimeError) as error:  # the allocator's failure, CUDA's or the CPU's
        if not isinstance(error, torch.OutOfMemoryError) and "can't allocate memory" not in str(error) \
                and "out of memory" not in str(error):
            raise
        raise UsageError(out_of_memory_advice(run, error)) from None
    except DataError as error:
        saved = run.world_size == 1 and progress.save_progress()
        last = run.saver.last_path()
        if not last.exists():
            raise DataError(f"{error} (no checkpoint had been saved yet)") from None
        raise DataError(f"{error} ({'progress saved; ' if saved else ''}resume with --resume {last} "
                        "once the data is fixed)") from None
    return (None if stopped else meter.metrics(run.device)), stopped


def own_epoch_sums(state, world_size):
    """The sums this rank's meter starts from: its own when the saved run had as many ranks, else
    all of them on rank 0 (the ranks' sums are added together: the steps before a resume count once)."""
    sums = state.epoch_sums or {}
    by_rank = sums.get("by_rank") or []
    if len(by_rank) == world_size:
        return by_rank[ddp.rank()]
    return sums if ddp.is_main_process() else None


def out_of_memory_advice(run, error):
    """One line: what ran out, how much was asked for, and the options that need less."""
    asked = re.search(r"[Tt]ried to allocate ([\d.]+) ?(bytes|[KMGT]iB)", str(error))
    size = None if asked is None else (f"{int(asked[1]) / 2 ** 30:.1f} GiB" if asked[2] == "bytes"
                                       else f"{asked[1]} {asked[2]}")
    settings = run.settings
    return (f"out of memory on {run.device} training with -b {settings.batch_size} at {settings.image_size} px"
            + (f" (an allocation of {size} failed)" if size else "")
            + "; lower -b/--batch-size, or use --amp or --checkpoint-backbone"
            + (", or a smaller --size" if settings.size != "tiny" else ""))


def evaluate_test_splits(run):
    """The base branch on the test split, and the accuracy on each extra split (the validation
    split, as `val`, with `--select-on val`)."""
    options = dict(amp=run.settings.amp, channels_last=run.step_settings.channels_last, tta=run.settings.tta)
    num_classes = run.data.train_set.num_classes
    result = evaluate(run.model, run.data.test_loader, run.device, num_classes, **options)
    loaders = {**run.data.extra_loaders, **({"val": run.data.val_loader} if run.data.val_loader else {})}
    extra = {split: evaluate(run.model, loader, run.device, num_classes, **options)["acc"]
             for split, loader in loaders.items()}
    return result, extra


def end_epoch(run, epoch, metrics, progress):
    """Evaluate, step the schedule, then commit the epoch with last.pth and write after it best.pth
    (on a new best), metrics.csv and the figures: a stop at any point leaves a folder that resumes."""
    state, on_val = run.state, run.settings.select_on == "val"
    try:
        result, extra = evaluate_test_splits(run)
    except DataError as error:  # the trained steps are kept: a resumed run evaluates them again
        saved = run.world_size == 1 and progress.save_progress()
        raise DataError(f"{error} ({kept(run, saved, 'the data')})") from None
    lr = run.optimizer.param_groups[0]["lr"]
    with warnings.catch_warnings():  # a run resumed after its last step takes none before this
        warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step", UserWarning)
        run.scheduler.step()
    chosen = extra["val"] if on_val else result["acc"]
    is_best = state.best_epoch == 0 or chosen > state.best_acc  # the first epoch is a best
    if is_best:
        state.best_acc, state.best_epoch, state.test_at_best = chosen, epoch + 1, result["acc"]
    row = epoch_row(epoch, lr, metrics, result, state, progress.seconds(), run.num_branches)
    row.update({f"{split}_acc": acc for split, acc in extra.items()})
    row.update({"test_at_best": state.test_at_best} if on_val else {})
    row.update({"tta": run.settings.tta} if run.settings.tta != "none" else {})
    state.history.append(row)
    state.epoch, state.step, state.epoch_sums, state.groups_done = epoch + 1, 0, None, 0
    try:
        run.saver.save(state)
    except OutputError as error:
        raise OutputError(f"{error} ({kept(run, False)})") from None
    write_after_last(run, result["confusion"] if is_best else None)
    run.logger.info(f"epoch {epoch + 1}/{run.settings.epochs}  lr {lr:.3g}  loss {metrics['loss']:.4f}  "
                    f"train {metrics['train_acc']:.2f}%  test {result['acc']:.2f}%  "
                    f"(mean class {result['mean_class_acc']:.2f}%, macro-F1 {result['macro_f1']:.2f}%)  "
                    f"{best_summary(run)}  {row['epoch_time_s']:.1f}s"
                    + "".join(f"  {split} {acc:.2f}%" for split, acc in extra.items())
                    + ("  (flip TTA)" if run.settings.tta == "flip" else ""))


def write_after_last(run, confusion, tensorboard=True):
    """best.pth (when `confusion`, the new best's, is given), metrics.csv and the figures, all derived
    from the state last.pth holds. A failure keeps the folder: the resume writes them again."""
    try:
        if confusion is not None:
            run.saver.save(run.state, "best.pth")
        run.report.epoch(run.state, run.num_branches, confusion, tensorboard)
    except OutputError as error:
        raise OutputError(f"{error} ({kept(run, True)})") from None


def kept(run, saved, cause="this"):
    """What a run stopped by an error keeps, and how to go on once `cause` is fixed."""
    last = run.saver.last_path()
    if not last.exists():
        return "no checkpoint had been saved yet"
    what = f"epoch {run.state.epoch} is saved in {last}" if saved and not run.state.step else \
        "progress saved" if saved else f"{last} is kept"
    return f"{what}; resume with --resume {last} once {cause} is fixed"


def complete_epoch_end(run):
    """Continuing a run's own folder from an epoch end: write the files a stop kept from being
    written after its last.pth, as the uninterrupted run would have (the RNG states stay as saved)."""
    state, folder = run.state, run.saver.run_dir
    if run.new_folder is not None or state.step or not state.epoch:
        return
    best_now = state.best_epoch == state.epoch
    missing = ddp.broadcast_object(unfinished_epoch_end(folder, best_now) if ddp.is_main_process() else None)
    if not missing:
        return
    confusion = None
    if best_now and {"best.pth", "confusion_best.png"} & set(missing):  # last.pth holds the best weights
        rng = rng_states()
        confusion = evaluate_test_splits(run)[0]["confusion"]
        set_rng_states(rng)
    write_after_last(run, confusion, tensorboard=False)
    run.logger.info(f"wrote what the end of epoch {state.epoch} had left unwritten: {', '.join(missing)}")


def best_summary(run):
    """`best 71.20% @ 3`, or with `--select-on val`: `best val 70.10% @ 3 (test 71.20%)`."""
    state = run.state
    if run.settings.select_on != "val":
        return f"best {state.best_acc:.2f}% @ {state.best_epoch}"
    return f"best val {state.best_acc:.2f}% @ {state.best_epoch} (test {state.test_at_best:.2f}%)"


def finish(run):
    """The final lines of a run that trained all its epochs; 1 when DDP ranks disagree."""
    if run.world_size > 1:
        in_sync = ddp.ranks_in_sync(run.model)
        run.logger.info(f"{run.world_size} ranks in sync: {'yes' if in_sync else 'NO'}")
        if not in_sync:
            return 1
    state = run.state
    chosen = (f"best validation accuracy {state.best_acc:.2f}% at epoch {state.best_epoch}, test accuracy "
              f"there {state.test_at_best:.2f}%" if run.settings.select_on == "val" else
              f"best test accuracy {state.best_acc:.2f}% at epoch {state.best_epoch}")
    run.logger.info(f"done: {chosen}; run folder {run.saver.run_dir}")
    return 0
