"""Where a training run starts from: `--resume` (the policy: which checkpoint a run may continue
and with which settings; the checks of its training state; restoring it) and `--pretrained` (the
IR50 backbone, and only it).
"""
from pathlib import Path

import torch

from models import CheckpointError, load_backbone, load_weights
from models.architectures import scripts

from . import distributed as ddp
from .checkpoint import CHECKPOINT_FORMAT, one_line, read_checkpoint
from .settings import (
    DEFAULT_PRETRAINED,
    RESUMABLE,
    STATE,
    RunSettings,
    UsageError,
    check,
    check_compile_backend,
    flag,
    names,
    problem,
)
from .training_state import RunState, epoch_sums_key, set_rng_states


def read_resume_checkpoint(settings, given, ended=lambda checkpoint: True):
    """`--resume`: `(RunSettings with the checkpoint's settings merged in, checkpoint)`, refusing a
    file that is not a continuable training checkpoint of this project or has nothing left to do:
    no epoch to train, and `ended(checkpoint)`, its last epoch end was written in full."""
    source = settings.resume
    resumed = read_checkpoint(source)
    settings = merge_resumed_settings(settings, resumed, given)
    malformed = training_state_problem(resumed)
    if malformed:
        raise CheckpointError(f"--resume {source}: its training state is malformed ({malformed}); it cannot be "
                              "continued")
    done = settings.epochs == resumed["epoch"] and not resumed["step"] and ended(resumed)
    if settings.epochs < resumed["epoch"] or done:
        raise UsageError(f"--resume {source}: the run has already trained {resumed['epoch']} epochs; "
                         f"give --epochs above {resumed['epoch']} to continue it")
    return settings, resumed


def merge_resumed_settings(settings, checkpoint, given):
    """The checkpoint's settings, with the options a resumed run may change taken from `settings`."""
    source = settings.resume
    saved = checkpoint.get("run_config") if isinstance(checkpoint, dict) else None
    if not isinstance(saved, dict) or not saved or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise UsageError(f"--resume {source} is not a training checkpoint of this project "
                         "(an authors' checkpoint can be evaluated with --evaluate)")
    script_arch = saved.get("recipe_arch", saved.get("arch"))
    if script_arch not in scripts():
        raise UsageError(f"--resume {source}: its saved settings name no script (recipe_arch is "
                         f"{script_arch!r}); the file is damaged or not ours")
    if script_arch != settings.recipe_arch:
        raise UsageError(f"--resume {source} is a {script_arch.upper()} run; "
                         f"continue it with main_{script_arch.upper()}.py")
    conflicts = sorted(k for k in given - set(names(RESUMABLE)) if saved.get(k) != getattr(settings, k))
    if conflicts:
        raise UsageError("a resumed run keeps its settings; these differ from the checkpoint: "
                         + ", ".join(f"{flag(k)} {getattr(settings, k)} (saved: {saved.get(k)})" for k in conflicts))
    merged = {**settings.as_dict(), **saved}  # settings added since the checkpoint was written keep their defaults
    for key in names(RESUMABLE):
        merged[key] = getattr(settings, key) if key in given or key == "resume" else merged.get(key)
    merged["output_dir"] = settings.output_dir if "output_dir" in given else None
    try:
        merged = RunSettings.from_mapping(merged)
        if merged.compile:  # a saved backend this torch lacks
            check_compile_backend(merged.compile_backend)
    except UsageError as error:
        raise UsageError(f"--resume {source}: its saved settings are invalid: {error}") from None
    return merged


def training_state_problem(checkpoint):
    """What is wrong with a training checkpoint's counters, optimiser, scheduler, RNG and mid-epoch
    sums, or None."""
    scheduler = checkpoint.get("scheduler")
    if not isinstance(scheduler, dict) or "last_epoch" not in scheduler:
        return "scheduler holds no schedule state"
    try:
        check({key: checkpoint.get(key) for key in ("epoch", "step", "best_epoch")}
              | {key: checkpoint[key] for key in ("best_acc", "test_at_best") if key in checkpoint}
              | {"groups_done": checkpoint.get("groups_done") or 0}
              | {key: scheduler.get(key) for key in ("last_epoch", "gamma")}, label=str, schema=STATE)
    except UsageError as error:
        return str(error)
    if (scheduler["last_epoch"], scheduler["gamma"]) != (checkpoint["epoch"], checkpoint["run_config"].get("gamma")):
        return (f"the schedule (last_epoch {scheduler['last_epoch']}, gamma {scheduler['gamma']}) is not the run's "
                f"(epoch {checkpoint['epoch']}, --gamma {checkpoint['run_config'].get('gamma')})")
    history = checkpoint.get("history")
    if not isinstance(history, list) or not all(
            isinstance(row, dict) and not problem(STATE["epoch"], row.get("epoch")) for row in history):
        return "history is not a list of per-epoch rows"
    optimizer = checkpoint.get("optimizer")
    if not isinstance(optimizer, dict) or not isinstance(optimizer.get("state"), dict) \
            or not isinstance(optimizer.get("param_groups"), list) or not optimizer["param_groups"]:
        return "optimizer holds no optimiser state"
    if not is_rng_states(checkpoint.get("rng")):
        return "rng does not hold the python, numpy and torch generator states"
    world_size = checkpoint.get("world_size", 1)
    if problem(STATE["world_size"], world_size):
        return f"world_size is {world_size!r}, not a number of processes"
    by_rank = checkpoint.get("rng_by_rank", [checkpoint["rng"]] * world_size)
    if not isinstance(by_rank, list) or len(by_rank) != world_size or not all(map(is_rng_states, by_rank)):
        return f"rng_by_rank does not hold the generator states of its {world_size} ranks"
    sums_key = epoch_sums_key(checkpoint)
    sums = checkpoint.get(sums_key)

    def has_sums(sums, keys=("loss_sum", "correct", "anchors")):
        return isinstance(sums, dict) and not any(problem(STATE["sum"], sums.get(key)) for key in keys)

    if checkpoint["step"] and not (has_sums(sums, ("loss_sum", "correct", "anchors", "seconds")) and (
            "by_rank" not in sums or isinstance(sums["by_rank"], list) and len(sums["by_rank"]) == world_size
            and all(map(has_sums, sums["by_rank"])))):
        return f"{sums_key} (the sums of the unfinished epoch) is missing or malformed"
    return None


def is_rng_states(rng):
    """Whether `rng` holds the python, numpy and torch generator states, as `rng_states` saves them."""
    return isinstance(rng, dict) and all(key in rng for key in ("python", "numpy", "torch")) \
        and isinstance(rng["torch"], torch.Tensor) and isinstance(rng["numpy"], (list, tuple)) \
        and len(rng["numpy"]) == 5


def restore_training(checkpoint, model, optimizer, scheduler):
    """Load a training checkpoint into the run's objects; returns the run's `RunState`.

    Each rank takes its own saved RNG states; a rank the saved run did not have keeps its own
    seeding, and a file that holds one process's states gives them to every rank.
    """
    load_weights(model, checkpoint)
    by_rank = checkpoint.get("rng_by_rank", [checkpoint["rng"]] * ddp.world_size())
    try:
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        if ddp.rank() < len(by_rank):
            set_rng_states(by_rank[ddp.rank()])
    except (ValueError, TypeError, KeyError, IndexError, RuntimeError) as error:
        raise CheckpointError(f"--resume: its optimiser, schedule or RNG state does not fit this run "
                              f"({one_line(error, keep=1)})") from None
    return RunState.from_checkpoint(checkpoint)



def load_pretrained(model, path):
    """`--pretrained`: fill the IR50 backbone, and only it, from `path`, before any run folder
    exists. Returns the line to log (None when there is nothing to say)."""
    if path in (None, "", "none"):
        return None
    if path == str(DEFAULT_PRETRAINED) and model.config["size"] != "paper":
        # the released IR50 file only fits the paper size; a smaller preset never reads it
        return (f"the IR50 backbone starts from random weights (the default --pretrained, {path}, "
                f"is for --size paper only)")
    if not Path(path).is_file():
        if path != str(DEFAULT_PRETRAINED):
            raise FileNotFoundError(f"--pretrained {path} does not exist")
        hint = "" if model.config.get("vit_init") == "xavier" else (
            "; from random weights the released ViT initialisation stalls, --vit-init xavier lets it learn "
            "(models/METHOD.md §8)")
        return (f"warning: {path} not found; the IR50 backbone starts from random weights "
                f"(expect far lower accuracy; see README, 'Pretrained IR50'){hint}")
    try:
        filled, source_format = load_backbone(model, read_checkpoint(path), name=path)
    except CheckpointError as error:
        raise CheckpointError(f"--pretrained {error}") from None
    return (f"backbone initialised from {path} ({source_format} weights): {filled} backbone "
            f"tensors filled; the rest of the network keeps its initialisation")
