"""`export`: the inference network (base branch only) as TorchScript, a `torch.export` program,
ONNX (onnxruntime) and/or safetensors weights.

Also writes the base branch's plain state dict and `model_info.json`: the classes, model size,
image size and train augmentation (which sets the test transform), the preprocessing spelt out,
the files' sizes and SHA-256; all that `utils.inference` needs to rebuild a `.safetensors` export
and `predict --onnx` to run one. Every written model is loaded back and must give the
checkpoint's logits on random inputs in a batch of a size other than the traced one, and on the
images of `--check-images`: within `TOLERANCE` (PyTorch), `onnx_model.tolerance` (onnxruntime).
"""
import contextlib
import hashlib
import json
import os
import shutil
import sys
import warnings

import torch

from data_preprocessing import IMAGENET_MEAN, IMAGENET_STD, DataError, ImageListDataset, is_image_file
from data_preprocessing.outputs import (
    CreatedPaths,
    OutputError,
    atomic_write,
    atomic_write_text,
    check_output_dir,
    output_errors,
    refuse_existing,
)
from models import build_model, count_parameters

from ..checkpoint import SAFETENSORS_HINT, is_safetensors
from ..inference import load_trained_model
from ..model_info import EXPORT_INFO_FILE as INFO_FILE
from . import ToolError, faces, onnx_model
from .formats import FORMAT_GROUPS, MODEL_FILES
from .predict import expand_inputs

STATE_DICT_FILE = "base_state_dict.pth"
TOLERANCE = 1e-5
CHECK_BATCH = 3  # differs from the example batches, so a batch size baked in would show
CHECK_IMAGES = 32  # the first images of --check-images that the check runs on
STAGE_DIR = ".export-in-progress"  # inside --out: the files are written here, then moved into place


def formats_of(names):
    """The formats that `--format` values name, in MODEL_FILES order."""
    chosen = {name for group in names for name in FORMAT_GROUPS.get(group, [group])}
    return [name for name in MODEL_FILES if name in chosen]


def require_extras(formats):
    """Before any work: the optional packages the formats need, or one line naming their requirements file."""
    if "onnx" in formats:
        onnx_model.require("--format onnx")
    if "safetensors" in formats:
        onnx_model.require("--format safetensors", ("safetensors",), SAFETENSORS_HINT)


ALL_FILES = [*MODEL_FILES.values(), STATE_DICT_FILE, INFO_FILE]


def export_torchscript(model, image_size, path):
    """`torch.jit.trace` on a 1×3×S×S input, saved to `path`."""
    example = torch.randn(1, 3, image_size, image_size)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated in recent PyTorch
        traced = torch.jit.trace(model, example, check_trace=False)
        atomic_write(path, lambda handle: torch.jit.save(traced, handle), flag="--out", buffered=True)


def load_torchscript(path, trained):
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


def rebuilt_base(state_dict, trained):
    """A fresh base branch of the model's size holding exactly `state_dict` (strict), in eval mode."""
    model = build_model("base", len(trained.classes), size=trained.size)
    model.load_state_dict(state_dict)
    return model.eval()


def export_safetensors(model, image_size, path):
    """The state dict as safetensors (its own copy of every tensor: the format refuses shared storage)."""
    from safetensors.torch import save
    data = save({name: tensor.detach().clone().contiguous() for name, tensor in model.state_dict().items()},
                metadata={"format": "pt"})
    atomic_write(path, lambda handle: handle.write(data), flag="--out", buffered=True)


def load_safetensors_model(path, trained):
    from safetensors.torch import load_file
    return rebuilt_base(load_file(path), trained)


WRITERS = {"torchscript": export_torchscript, "export": export_program, "onnx": onnx_model.export_onnx,
           "safetensors": export_safetensors}
# each written file loaded back as a callable N×3×S×S → logits
RELOADERS = {"torchscript": load_torchscript,
             "export": lambda path, trained: torch.export.load(str(path)).module(),
             "onnx": lambda path, trained: onnx_model.OnnxModel(path),
             "safetensors": load_safetensors_model,
             "state_dict": lambda path, trained: rebuilt_base(torch.load(path, map_location="cpu",
                                                                          weights_only=True), trained)}


# ------------------------------------------------------------------------------ the check

def check_image_files(paths):
    """The first `CHECK_IMAGES` image files of `--check-images` (files or folders), before any work."""
    if not paths:
        return []
    try:
        files = [path for path in expand_inputs(paths) if is_image_file(path)]
    except ToolError as error:
        raise ToolError(f"--check-images: {error}") from None
    if not files:
        raise ToolError(f"--check-images: no image files in {', '.join(map(str, paths))}")
    return files[:CHECK_IMAGES]


def check_batches(trained, image_files):
    """The inputs every artifact is checked on: `CHECK_BATCH` random ones, then the images (test transform)."""
    side = trained.image_size
    batches = [torch.randn(CHECK_BATCH, 3, side, side, generator=torch.Generator().manual_seed(0))]
    if image_files:
        reader = ImageListDataset([str(f) for f in image_files], [0] * len(image_files), trained.classes)
        transform, images = trained.transform(), []
        for index, path in enumerate(image_files):
            try:
                images.append(transform(reader.load_image(index)))
            except DataError as error:
                raise ToolError(f"--check-images {path}: cannot read it ({error.__cause__ or error})") from None
        batches.append(torch.stack(images))
    return batches


@torch.no_grad()
def max_abs_diff(reference_model, reloaded, batches):
    """The largest |logit difference| over all batches."""
    return max(float((reloaded(x) - reference_model(x)).abs().max()) for x in batches)


@torch.no_grad()
def tolerances(model, formats, batches):
    """`{artifact: largest allowed max abs diff}`: onnxruntime's scales with the logits."""
    onnx_limit = onnx_model.tolerance(torch.cat([model(x) for x in batches]))
    return {name: onnx_limit if name == "onnx" else TOLERANCE for name in [*formats, "state_dict"]}


def checked_on(image_files):
    images = f" and {len(image_files)} image{'s' if len(image_files) != 1 else ''} of --check-images" \
        if image_files else " (give --check-images for real faces too)"
    return f"{CHECK_BATCH} random inputs{images}"


# ------------------------------------------------------------------------------ model_info.json

def sha256_of(path, chunk=1 << 20):
    """The hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def preprocessing(trained):
    """The test transform spelt out, for code that runs the model without this repository."""
    side = trained.image_size
    steps = trained.transform().transforms
    crop = any(type(t).__name__ == "CenterCrop" for t in steps)
    resize = {"resize": list(steps[0].size), "center_crop": side} if crop else {"resize": [side, side]}
    return {**resize, "resize_order": "[height, width] (PIL's resize takes (width, height))",
            "interpolation": "bilinear (PIL)", "antialias": True,
            "antialias_note": "PIL's Image.resize(..., Image.BILINEAR): its filter widens when shrinking",
            "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
            "input": f"RGB scaled to [0, 1], then (x - mean) / std; float32 Nx3x{side}x{side}",
            "colour": "EXIF orientation applied first; 16-bit grayscale (or wider) divided by 257 and rounded "
                      "to 8 bits; transparent areas (alpha, or a palette's transparent colour) composited onto "
                      "white (255, 255, 255), then RGB",
            "face": {"aligned": True, "what": "an aligned face crop, as predict makes it: dlib's 5 landmarks "
                                              "mapped onto 'template' by a similarity transform (bilinear)",
                     "landmarks": list(faces.LANDMARK_NAMES),
                     "template": [[round(float(v), 3) for v in point] for point in faces.TEMPLATE],
                     "template_units": "(x, y) as fractions of the crop's width and height"}}


def model_info(trained, checkpoint, formats, parameters, paths, diffs, limits, image_files):
    """What `model_info.json` holds: enough to rebuild the model and its preprocessing, and the check;
    the source checkpoint by file name and SHA-256 (no local path ships with the model)."""
    info = {
        "classes": trained.classes, "num_classes": len(trained.classes), "arch": "base",
        "image_size": trained.image_size, "size": trained.size,
        "dataset": trained.info.dataset, "augmentation": trained.augmentation,
        "preprocessing": preprocessing(trained),
        "output": "logits over the classes, in this order",
        "source_checkpoint": os.path.basename(checkpoint), "source_sha256": sha256_of(checkpoint),
        "source_format": trained.info.format,
        "source_arch": trained.info.arch, "source_model_config": trained.info.model_config,
        "parameters": parameters,
        "files": {path.name: path.stat().st_size for path in paths},
        "sha256": {path.name: sha256_of(path) for path in paths},
        "max_abs_diff": diffs, "tolerance": limits, "checked_on": checked_on(image_files),
        "formats": formats, "torch_version": torch.__version__,
    }
    if "onnx" in formats:
        import onnxruntime
        info["onnx"] = {"opset": onnx_model.OPSET, "input": onnx_model.INPUT_NAME, "output": onnx_model.OUTPUT_NAME,
                        "dynamic_batch": True, "relative_tolerance": onnx_model.RELATIVE_TOLERANCE,
                        "onnxruntime_version": onnxruntime.__version__}
    return info


def run(args):
    """The `export` command; returns 1 when a reloaded artifact does not reproduce the logits.

    Everything is written into a hidden folder inside `--out` and moved into place only once every
    file has been written and checked, so a failure leaves `--out` as it was (and removes it when
    this command created it)."""
    formats = formats_of(args.format)
    require_extras(formats)
    out = check_output_dir(args.out, "--out", create=True)
    refuse_exporting_over_the_checkpoint(args.checkpoint, out)
    refuse_existing([("--out", out / name) for name in ALL_FILES], args.overwrite)
    image_files = check_image_files(args.check_images)
    trained = load_trained_model(args.checkpoint, dataset=args.dataset, class_list=args.classes,
                                 data_root=args.data_root, size=args.size, image_size=args.image_size)
    if trained.info.dataset is None and args.dataset:
        trained.info.dataset = args.dataset  # recorded in model_info.json: --evaluate's default dataset
    model = trained.model.cpu()
    with staging(out) as stage:
        paths = write_models(model, trained, formats, stage)
        batches = check_batches(trained, image_files)
        diffs = {name: max_abs_diff(model, RELOADERS[name](path, trained), batches) for name, path in paths.items()}
        limits = tolerances(model, formats, batches)
        parameters = count_parameters(model)
        info = model_info(trained, args.checkpoint, formats, parameters, paths.values(), diffs, limits, image_files)
        atomic_write_text(json.dumps(info, indent=2) + "\n", stage / INFO_FILE, flag="--out")
        passed = all(diffs[name] < limits[name] for name in diffs)
        if passed:
            publish(stage, out, formats)
        report(args.checkpoint, trained, parameters, {name: out / path.name for name, path in paths.items()},
               info["files"], diffs, limits, checked_on(image_files))
    if not passed:
        print(f"nothing written to {out}: a reloaded file does not give the checkpoint's logits", file=sys.stderr)
        return 1
    print(f"  {out / INFO_FILE}  classes, image size, preprocessing, SHA-256 of the files")
    return 0


@contextlib.contextmanager
def staging(out):
    """A fresh hidden folder `out/STAGE_DIR` to write the export into (one left by a killed export is
    removed first); on leaving, it is removed, and so are the folders this command created for `out`
    when nothing was moved into them."""
    stage = out / STAGE_DIR
    if stage.is_dir() and not stage.is_symlink():
        with output_errors(stage, "--out", "removing an unfinished export"):
            shutil.rmtree(stage)
    created = CreatedPaths()
    created.make_dir(stage, "--out")
    try:
        yield stage
    except OutputError as error:  # name the file where it was to go, not its hidden stage
        raise OutputError(str(error).replace(f"{stage}{os.sep}", f"{out}{os.sep}")) from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        created.undo()  # the folders made for `out`, deepest first; a folder that holds something stays


def publish(stage, out, formats):
    """Move the staged files into `out` (`model_info.json` last) and delete an earlier export's model
    files of formats not written now (only reached with --overwrite), so the folder holds exactly
    what model_info.json lists."""
    for name in [*sorted(set(ALL_FILES) - {INFO_FILE}), INFO_FILE]:
        with output_errors(out / name, "--out", "moving it into place"):
            if (stage / name).exists():
                os.replace(stage / name, out / name)
            else:
                (out / name).unlink(missing_ok=True)


def refuse_exporting_over_the_checkpoint(checkpoint, out):
    """Before any work: ToolError when a file the export writes or removes in `out` is the checkpoint
    itself, or (for a .safetensors checkpoint) the model_info.json it is read with."""
    inputs = [("the checkpoint itself", checkpoint)]
    if is_safetensors(checkpoint):
        inputs.append((f"the {INFO_FILE} the checkpoint is read with", os.path.join(os.path.dirname(checkpoint),
                                                                                   INFO_FILE)))
    for what, source in inputs:
        for name in ALL_FILES:
            # the same file: a link, a hard link or another spelling of it (a path not there is none)
            with contextlib.suppress(OSError):
                if os.path.samefile(source, out / name):
                    raise ToolError(f"--checkpoint {checkpoint}: this export would replace or remove {out / name}, "
                                    f"which is {what}; export into another --out folder")


def write_models(model, trained, formats, out):
    """Write each format's file and the plain state dict; `{artifact: path}`."""
    paths = {}
    for name in formats:
        path = out / MODEL_FILES[name]
        try:
            WRITERS[name](model, trained.image_size, path)
        except OutputError:
            raise
        except Exception as error:  # report which format failed and why, keep the others
            raise ToolError(f"{name} export failed: {type(error).__name__}: {error}") from error
        paths[name] = path
    state_dict = model.state_dict()
    atomic_write(out / STATE_DICT_FILE, lambda handle: torch.save(state_dict, handle), flag="--out", buffered=True)
    paths["state_dict"] = out / STATE_DICT_FILE
    return paths


def report(checkpoint, trained, parameters, paths, sizes, diffs, limits, checked):
    """One line per file: its size, the max abs logit difference and the verdict."""
    side = trained.image_size
    print(f"base branch of {checkpoint}: {parameters:,} parameters, {len(trained.classes)} classes, "
          f"{trained.size} model, {side}×{side} input; checked on {checked}")
    for name, path in paths.items():
        verdict = "ok" if diffs[name] < limits[name] else "FAILED"
        what = (f"onnxruntime max abs logit diff {diffs[name]:.3g} (tolerance {limits[name]:.3g}, opset "
                f"{onnx_model.OPSET})" if name == "onnx" else f"reloaded max abs diff {diffs[name]:.3g}"
                + ("" if verdict == "ok" else f" (must be < {limits[name]:g})"))
        print(f"  {path}  {sizes[path.name] / 2**20:.2f} MB  {what}  {verdict}")
