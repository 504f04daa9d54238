"""`--evaluate CKPT`: the base branch of a checkpoint on a test split, and the files it writes."""
import csv
import json
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset

from data_preprocessing import build_dataset, describe_transform
from data_preprocessing.outputs import atomic_write, check_output_file, refuse_existing

from . import distributed as ddp
from .config import UsageError, resolve_config
from .device import resolve_device, use_channels_last
from .engine import evaluate
from .inference import load_checkpoint, load_trained_model
from .metrics import classification_summary
from .reporting import format_confusion, format_report
from .runtime import leave_signals_to_main


class IndexedDataset(torch.utils.data.Dataset):
    """`(image, label, index)` items, so evaluation can name its images and gather across ranks."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        image, label = self.dataset[index]
        return image, label, index


def load_split(config, split, transform):
    """Split `split` of the configured dataset, with `transform`."""
    classes = config["classes"].split(",") if config.get("classes") else None
    return build_dataset(config["dataset"], split, data_root=config["data_root"], transform=transform,
                         classes=classes)


def test_loader(dataset, config, device, rank, world_size):
    """An in-order loader of this rank's share of `dataset`, as `(image, label, index)` batches."""
    indexed = IndexedDataset(dataset)
    shard = Subset(indexed, range(rank, len(indexed), world_size)) if world_size > 1 else indexed
    return DataLoader(shard, batch_size=config["batch_size"] * 2, shuffle=False,
                      num_workers=config["workers"], pin_memory=device.type == "cuda",
                      persistent_workers=False, worker_init_fn=leave_signals_to_main,
                      generator=torch.Generator().manual_seed(rank))


def run_evaluation(arch, args, logger):
    """`--evaluate CKPT`: base branch on the test split; accuracy, mean class accuracy, confusion.

    The network, its size and its test transform follow the checkpoint: what our checkpoints
    record, or for the authors' files the released recipe of the architecture their keys show.
    """
    config = resolve_config(arch, args)
    device = resolve_device(config["device"])
    rank, world_size, _ = ddp.init_distributed(device.type)
    outputs = prediction_files(config["predictions"])
    refuse_existing([("--predictions", path) for path in outputs], overwrite_flag=None)
    for path in outputs:
        check_output_file(path, "--predictions")
    trained, dataset = load_evaluation_inputs(config, args, arch)
    logger.info(f"loaded {config['evaluate']}: {trained.info.format_title}, "
                f"{(trained.info.arch or 'base').upper()} {trained.size} size, {len(trained.classes)} classes")
    logger.info(f"test transform: {describe_transform(dataset.transform)}")
    model = trained.model.to(device)
    channels_last = use_channels_last(config["channels_last"], device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if config["compile"]:
        model = torch.compile(model, backend=config["compile_backend"])
    result = evaluate(model, test_loader(dataset, config, device, rank, world_size), device,
                      dataset.num_classes, amp=config["amp"], channels_last=channels_last,
                      keep_logits=bool(outputs))
    if ddp.is_main_process():
        report = log_result(logger, result, dataset)
        if outputs:
            write_prediction_files(outputs, config, dataset, result, report)
            logger.info(f"wrote {outputs[0]} and {outputs[1]}")
    return 0


def load_evaluation_inputs(config, args, arch):
    """The checkpoint's inference model and the test split it is evaluated on."""
    info = load_checkpoint(config["evaluate"])[1]
    if args.dataset is None and info.dataset:
        config["dataset"] = info.dataset
    trained = load_trained_model(config["evaluate"], dataset=config["dataset"], class_list=config["classes"],
                                 data_root=config["data_root"], size=args.size, image_size=args.image_size,
                                 recipe_arch=arch)
    dataset = load_split(config, "test", trained.transform())
    if dataset.num_classes != len(trained.classes):
        raise UsageError(f"{config['evaluate']} has {len(trained.classes)} classes but "
                         f"{config['dataset']} has {dataset.num_classes}")
    return trained, dataset


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


def write_prediction_files(outputs, config, dataset, result, report):
    """The per-image CSV and the summary JSON of `--predictions`."""
    csv_path, json_path = outputs
    atomic_write(csv_path, lambda handle: write_predictions(handle, dataset, result["logits"]), mode="w")
    summary = dict(checkpoint=str(config["evaluate"]), dataset=config["dataset"],
                   test_transform=describe_transform(dataset.transform), images=len(dataset),
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
        writer.writerow([dataset.image_names[index], int(dataset.labels[index]), pred]
                        + [f"{v:.6f}" for v in logits])
