"""`--evaluate CKPT`: the base branch of a checkpoint on a test split, and the files it writes."""
import csv
import json
from pathlib import Path

import numpy as np
import torch

from data_preprocessing import DatasetView, canonical_class_name, describe_transform, match_classes
from data_preprocessing.files import InputError, read_json
from data_preprocessing.outputs import OutputError, atomic_write, check_output_file, printable, refuse_existing

from . import distributed as ddp
from .checkpoint import load_checkpoint
from .config import UsageError, resolve_settings
from .data import load_split, test_loader
from .device import place_model, resolve_device, use_channels_last
from .engine import evaluate
from .inference import load_trained_model
from .metrics import classification_summary
from .reporting import format_confusion, format_report, plot_confusion


def run_evaluation(arch, args, logger):
    """`--evaluate CKPT`: base branch on the test split; accuracy, mean class accuracy, confusion.

    The network, its size and its test transform follow the checkpoint: what our checkpoints
    record, or for the authors' files the released recipe of the architecture their keys show.
    """
    settings = resolve_settings(arch, args)
    device = resolve_device(settings.device)
    rank, world_size, _ = ddp.init_distributed(device.type)
    outputs = prediction_files(settings.predictions)
    beside = [*outputs, confusion_figure_path(settings, outputs)] if outputs else []
    refuse_existing([("--predictions", path) for path in beside], overwrite_flag=None)
    for path in beside:
        check_output_file(path, "--predictions")
    trained, dataset, model_indices, note = load_evaluation_inputs(settings, args, arch)
    stored = [dtype for dtype in trained.info.weight_dtypes if dtype != "float32"]
    logger.info(f"loaded {settings.evaluate}: {trained.info.format_title}, "
                f"{(trained.info.arch or 'base').upper()} {trained.size} size, {len(trained.classes)} classes"
                + (f", {'/'.join(stored)} weights computed in float32" if stored else ""))
    logger.info(f"test transform: {describe_transform(dataset.transform)}"
                + ("; flip test-time augmentation" if settings.tta == "flip" else ""))
    if note:
        logger.info(note)
    model = trained.model if model_indices is None else SharedClassLogits(trained.model, model_indices)
    channels_last = use_channels_last(settings.channels_last, device)
    model = place_model(model, device, channels_last, settings.compile, settings.compile_backend)
    result = evaluate(model, test_loader(dataset, settings, device, rank, world_size), device,
                      dataset.num_classes, amp=settings.amp, channels_last=channels_last,
                      keep_logits=bool(outputs), tta=settings.tta)
    if ddp.is_main_process():
        report = log_result(logger, result, dataset)
        if outputs:
            write_prediction_files(outputs, settings, dataset, result, report)
            logger.info(f"wrote {outputs[0]} and {outputs[1]}")
        write_confusion_figure(logger, settings, outputs, result, dataset)
    return 0


def confusion_figure_path(settings, outputs):
    """Where `--evaluate` draws its confusion matrix: beside `--predictions` (X_confusion.png), else
    in the checkpoint's run folder (confusion_<checkpoint>_<dataset>.png); None for a file kept
    elsewhere (a downloaded checkpoint's folder is not ours to write in)."""
    if outputs:
        return outputs[0].with_name(f"{outputs[0].stem}_confusion.png")
    checkpoint = Path(settings.evaluate)
    if is_run_folder(checkpoint.parent):
        return checkpoint.parent / f"confusion_{checkpoint.stem}_{settings.dataset}.png"
    return None


def is_run_folder(folder):
    """Whether `folder` is one of our run folders: its `config.json` is a run's resolved settings
    and it holds a `last.pth` (a folder that merely holds some `config.json` is not)."""
    try:
        saved = read_json(folder / "config.json")
    except InputError:
        return False
    return isinstance(saved, dict) and "recipe_arch" in saved and (folder / "last.pth").is_file()


def write_confusion_figure(logger, settings, outputs, result, dataset):
    """The row-normalised confusion matrix figure of the evaluation, never over an existing file."""
    path = confusion_figure_path(settings, outputs)
    if path is None:
        return
    if path.exists():
        logger.info(f"confusion matrix figure not written: {path} exists")
        return
    title = f"{Path(settings.evaluate).name} on {settings.dataset}: {result['acc']:.2f}%"
    try:
        plot_confusion(path, result["confusion"], dataset.classes, title)
    except OutputError as error:  # an extra beside the result, never a reason to fail it
        logger.info(f"confusion matrix figure not written: {error}")
        return
    logger.info(f"wrote {path}")


def load_evaluation_inputs(settings, args, arch):
    """The checkpoint's inference model, the test split it is evaluated on (its classes shared with
    the model's), the model's output index of each of those classes (None: all, in order) and a
    line saying how a model of other classes was matched (None when the classes are the same)."""
    loaded = load_checkpoint(settings.evaluate)
    info = loaded[1]
    if args.dataset is None and info.dataset:
        settings.dataset = info.dataset
    named = bool(info.classes)  # our checkpoints name their classes; for other files they are the dataset's
    trained = load_trained_model(settings.evaluate, dataset=None if named else settings.dataset,
                                 class_list=None if named else settings.classes, data_root=settings.data_root,
                                 size=args.size, image_size=args.image_size, recipe_arch=arch,
                                 loaded=loaded)
    dataset = load_split(settings, "test", trained.transform())
    return (trained, *shared_classes(trained.classes, dataset, settings))


def shared_classes(model_classes, dataset, settings):
    """`(dataset view, model output indices, note)`: the images of the classes both know (matched
    by expression name, e.g. Happy = Happiness), relabelled in the dataset's order."""
    canonical = [canonical_class_name(name) for name in model_classes]
    if canonical == [canonical_class_name(name) for name in dataset.classes]:
        return dataset, None, None
    try:
        mapping = match_classes(model_classes, dataset.classes)
    except ValueError as error:
        raise UsageError(f"{settings.evaluate}: {error}") from None
    shared = [label for label, index in enumerate(mapping) if index is not None]
    if not shared:
        raise UsageError(f"{settings.evaluate} knows {', '.join(model_classes)}, and {settings.dataset} has "
                         f"{', '.join(dataset.classes)}: no expression in common")
    relabel = np.full(dataset.num_classes, -1)
    relabel[shared] = np.arange(len(shared))
    keep = np.flatnonzero(np.isin(dataset.labels, shared))
    view = DatasetView(dataset, keep, relabel, classes=[dataset.classes[label] for label in shared])
    unknown = [dataset.classes[label] for label, index in enumerate(mapping) if index is None]
    pairs = ", ".join(f"{model_classes[mapping[label]]}={dataset.classes[label]}" for label in shared)
    note = (f"cross-dataset: the model's classes matched to {settings.dataset}'s by name ({pairs}); "
            f"{len(dataset) - len(keep)} images of classes the model does not know "
            f"({', '.join(unknown) or 'none'}) left out; scores over the {len(shared)} shared classes, "
            "from the model's logits of those classes")
    return view, [mapping[label] for label in shared], note


class SharedClassLogits(torch.nn.Module):
    """A classifier's logits of the given classes only, in the given order."""

    def __init__(self, model, indices):
        super().__init__()
        self.model = model
        self.register_buffer("indices", torch.as_tensor(indices), persistent=False)

    def forward(self, images):
        return self.model(images).index_select(1, self.indices)


def log_result(logger, result, dataset):
    """Log the scores, the per-class report and the confusion matrix; return the report."""
    report = classification_summary(result["confusion"], dataset.classes)
    logger.info(f"test accuracy {result['acc']:.2f}%  mean class accuracy "
                f"{result['mean_class_acc']:.2f}%  macro-F1 {result['macro_f1']:.2f}%  "
                f"({len(dataset)} images)")
    logger.info("per class\n" + format_report(report))
    logger.info("confusion matrix (rows: true, columns: predicted)\n"
                + format_confusion(result["confusion"], dataset.classes))
    return report


def prediction_files(predictions):
    """`--predictions X.csv` writes X.csv (per image) and X.json (the summary)."""
    if not predictions:
        return ()
    path = Path(predictions)
    if path.suffix.lower() == ".json":
        raise UsageError(f"--predictions {path}: give the CSV's name (e.g. {path.with_suffix('.csv')}); "
                         "the JSON summary is written beside it")
    return path, path.with_suffix(".json")


def write_prediction_files(outputs, settings, dataset, result, report):
    """The per-image CSV and the summary JSON of `--predictions`."""
    csv_path, json_path = outputs
    atomic_write(csv_path, lambda handle: write_predictions(handle, dataset, result["logits"]), mode="w")
    summary = dict(checkpoint=printable(settings.evaluate), dataset=settings.dataset,
                   test_transform=describe_transform(dataset.transform), tta=settings.tta, images=len(dataset),
                   accuracy=result["acc"], mean_class_accuracy=result["mean_class_acc"],
                   macro_f1=result["macro_f1"], per_class=report,
                   confusion=result["confusion"].tolist(), classes=dataset.classes)
    atomic_write(json_path, lambda handle: json.dump(summary, handle, indent=2), mode="w")


def write_predictions(handle, dataset, logits_by_index):
    """One CSV row per image: name, label, predicted class and the logits."""
    num_classes = dataset.num_classes
    writer = csv.writer(handle)
    writer.writerow(["image", "label", "pred"] + [f"logit_{k}" for k in range(num_classes)])
    for index in range(len(dataset)):
        logits = logits_by_index[index]
        pred = max(range(num_classes), key=logits.__getitem__)
        writer.writerow([printable(dataset.image_names[index]), int(dataset.labels[index]), pred]
                        + [f"{v:.6f}" for v in logits])
