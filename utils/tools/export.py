"""`export`: the inference network (base branch only) as TorchScript and/or a `torch.export` program.

Also writes the base branch's plain state dict and a JSON file with the class names and the
preprocessing. Every written model is loaded back and must give the checkpoint's logits
(max abs difference below `TOLERANCE`) on a batch of a size other than the traced one.
"""
import json
import warnings

import torch

from data_preprocessing import IMAGENET_MEAN, IMAGENET_STD
from data_preprocessing.outputs import (
    OutputError,
    atomic_write,
    atomic_write_text,
    check_output_dir,
    make_output_dir,
    output_errors,
    refuse_existing,
    remove_stale_temporaries,
)
from models import build_model, count_parameters

from ..inference import load_trained_model
from . import ToolError

MODEL_FILES = {"torchscript": "model_torchscript.pt", "export": "model_exported.pt2"}
STATE_DICT_FILE = "base_state_dict.pth"
INFO_FILE = "model_info.json"
TOLERANCE = 1e-5
CHECK_BATCH = 3  # differs from the example batches, so a batch size baked in would show


def formats_of(name):
    return ["torchscript", "export"] if name == "both" else [name]


def planned_files(formats):
    return [MODEL_FILES[f] for f in formats] + [STATE_DICT_FILE, INFO_FILE]


ALL_FILES = planned_files(list(MODEL_FILES))


def export_torchscript(model, image_size, path):
    """`torch.jit.trace` on a 1×3×S×S input, saved to `path`."""
    example = torch.randn(1, 3, image_size, image_size)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated in recent PyTorch
        traced = torch.jit.trace(model, example, check_trace=False)
        atomic_write(path, lambda handle: torch.jit.save(traced, handle), flag="--out", buffered=True)


def load_torchscript(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(str(path), map_location="cpu")


def export_program(model, image_size, path):
    """`torch.export` with a dynamic batch dimension, saved with `torch.export.save`."""
    example = torch.randn(2, 3, image_size, image_size)
    batch = torch.export.Dim("batch", min=1, max=65536)
    program = torch.export.export(model, (example,), dynamic_shapes={"x": {0: batch}})
    # buffered: torch.export.save aborts the process when a write to the file fails
    atomic_write(path, lambda handle: torch.export.save(program, handle), flag="--out", buffered=True)


def load_program(path):
    return torch.export.load(str(path)).module()


def load_state_dict_model(path, num_classes, size):
    model = build_model("base", num_classes, size=size)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()


@torch.no_grad()
def max_abs_diff(reference_model, reloaded, images):
    return float((reloaded(images) - reference_model(images)).abs().max())


def model_info(trained, checkpoint, formats, parameters, file_bytes, diffs):
    side = trained.image_size
    crop = next((t.size for t in trained.transform().transforms if type(t).__name__ == "CenterCrop"), None)
    first_resize = list(trained.transform().transforms[0].size)
    resize = {"resize": first_resize, "center_crop": side} if crop else {"resize": [side, side]}
    return {
        "classes": trained.classes, "num_classes": len(trained.classes),
        "image_size": side, "size": trained.size,
        "preprocessing": {**resize, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
                          "input": f"RGB scaled to [0, 1], then (x - mean) / std; float32 Nx3x{side}x{side}"},
        "output": "logits over the classes, in this order",
        "source_checkpoint": str(checkpoint), "source_format": trained.info.format,
        "source_arch": trained.info.arch, "parameters": parameters,
        "files": file_bytes, "max_abs_diff": diffs, "formats": formats, "torch_version": torch.__version__,
    }


def run(args):
    """The `export` command; returns 1 when a reloaded artifact does not reproduce the logits."""
    formats = formats_of(args.format)
    out = check_output_dir(args.out, "--out", create=True)
    refuse_existing([("--out", out / name) for name in ALL_FILES], args.overwrite)
    trained = load_trained_model(args.checkpoint, dataset=args.dataset, class_list=args.classes,
                                 data_root=args.data_root, size=args.size, image_size=args.image_size)
    model, image_size = trained.model.cpu(), trained.image_size
    make_output_dir(out, "--out")
    for name in ALL_FILES:
        remove_stale_temporaries(out, name)

    writers = {"torchscript": (export_torchscript, load_torchscript),
               "export": (export_program, load_program)}
    reloaders = {}
    for name in formats:
        write, load = writers[name]
        path = out / MODEL_FILES[name]
        try:
            write(model, image_size, path)
        except OutputError:
            raise
        except Exception as error:  # report which format failed and why, keep the others
            raise ToolError(f"{name} export failed: {type(error).__name__}: {error}") from error
        reloaders[name] = (path, load)
    state_dict = model.state_dict()
    atomic_write(out / STATE_DICT_FILE, lambda handle: torch.save(state_dict, handle), flag="--out", buffered=True)
    reloaders["state_dict"] = (out / STATE_DICT_FILE,
                               lambda p: load_state_dict_model(p, len(trained.classes), trained.size))

    images = torch.randn(CHECK_BATCH, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    diffs = {name: max_abs_diff(model, load(path), images) for name, (path, load) in reloaders.items()}
    file_bytes = {path.name: path.stat().st_size for path, _ in reloaders.values()}
    parameters = count_parameters(model)
    info = model_info(trained, args.checkpoint, formats, parameters, file_bytes, diffs)
    remove_unlisted_models(out, formats)
    atomic_write_text(json.dumps(info, indent=2) + "\n", out / INFO_FILE, flag="--out")

    print(f"base branch of {args.checkpoint}: {parameters:,} parameters, {len(trained.classes)} classes, "
          f"{trained.size} model, {image_size}×{image_size} input")
    for name, (path, _) in reloaders.items():
        verdict = "ok" if diffs[name] < TOLERANCE else f"FAILED (must be < {TOLERANCE:g})"
        print(f"  {path}  {_megabytes(file_bytes[path.name])}  reloaded max abs diff {diffs[name]:.3g}  {verdict}")
    print(f"  {out / INFO_FILE}  classes, image size and preprocessing")
    return 0 if all(d < TOLERANCE for d in diffs.values()) else 1


def remove_unlisted_models(out, formats):
    """Delete an earlier export's model files of formats not written now (only reached with
    --overwrite), so the folder holds exactly what model_info.json lists."""
    for name, file_name in MODEL_FILES.items():
        if name not in formats:
            with output_errors(out / file_name, "--out", "removing it"):
                (out / file_name).unlink(missing_ok=True)


def _megabytes(num_bytes):
    return f"{num_bytes / 2**20:.2f} MB"
