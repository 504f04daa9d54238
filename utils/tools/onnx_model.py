"""ONNX: the base branch exported with the dynamo exporter, and run with onnxruntime.

Needs the extra of `requirements-onnx.txt` (onnx and onnxscript to export, onnxruntime to run,
onnx to check that no weight holds NaN or an infinite value), imported only when used.
`OnnxModel` has the call shape of the PyTorch network (an N×3×S×S float tensor in, N×K logits
out), so `predict` runs either one; `load_onnx_classifier` gives it with
the classes and preprocessing of the `model_info.json` beside the file, as a `TrainedModel`.
"""
import importlib

import numpy as np
import torch

from data_preprocessing.outputs import atomic_write

from ..checkpoint import CheckpointError, export_info
from ..device import DeviceUnavailable
from ..inference import TrainedModel
from ..model_info import EXPORT_INFO_FILE, read_model_info
from . import ToolError
from .formats import OPSET

INPUT_NAME, OUTPUT_NAME = "images", "logits"
# Max abs logit difference allowed between onnxruntime and PyTorch, relative to the largest |logit|
# (at least 1). The graph computes the same fp32 ops in another order, with other (fused) kernels:
# measured at most 1.4e-6 of the largest |logit| (paper size at 224 px, logits up to 35) and 6e-7
# (tiny), on random inputs, demo and FER2013 faces (README, "export"); 1e-4 leaves 70× headroom,
# while a real fault (a wrong weight, normalisation, resize mode or layer) moves the logits by a
# large fraction of their scale.
RELATIVE_TOLERANCE = 1e-4
ONNX_HINT = "pip install -r requirements-onnx.txt"
EXPORT_MODULES = ("onnx", "onnxscript", "onnxruntime")


def require(what, modules=EXPORT_MODULES, hint=ONNX_HINT):
    """Import an extra's `modules`, or a ToolError naming its install command."""
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            raise ToolError(f"{what} needs {', '.join(modules)}, and {name} is not installed; "
                            f"install {'them' if len(modules) > 1 else 'it'} with: {hint}") from None


def tolerance(reference_logits):
    """The largest max abs difference allowed against PyTorch logits `reference_logits`."""
    return RELATIVE_TOLERANCE * max(1.0, float(reference_logits.abs().max()))


# ------------------------------------------------------------------------------ export

def export_onnx(model, image_size, path):
    """`torch.onnx.export(dynamo=True)` at `OPSET` with a dynamic batch dimension, written to `path`."""
    example = torch.randn(2, 3, image_size, image_size)
    batch = torch.export.Dim("batch", min=1, max=65536)
    program = torch.onnx.export(model, (example,), dynamo=True, opset_version=OPSET, verbose=False,
                                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                dynamic_shapes={"x": {0: batch}})
    check_initializers(program.model_proto, path)
    data = program.model_proto.SerializeToString()
    atomic_write(path, lambda handle: handle.write(data), flag="--out", buffered=True)


def check_initializers(proto, path):
    """CheckpointError when a floating-point initializer (a weight) of the graph holds NaN or an
    infinite value, as for a checkpoint's tensors: the model would print nan% for every face."""
    from onnx import numpy_helper
    arrays = ((tensor.name, numpy_helper.to_array(tensor)) for tensor in proto.graph.initializer)
    bad = [name for name, array in arrays if array.dtype.kind == "f" and not np.isfinite(array).all()]
    if bad:
        raise CheckpointError(f"{path}: {len(bad)} initializers hold NaN or infinite values (e.g. {bad[0]}); "
                              f"the weights are damaged")


def read_graph(path):
    """The ONNX graph of `path` (read with `onnx`), or ToolError when it is not one."""
    import onnx
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as error:  # protobuf's DecodeError and onnx's own
        raise ToolError(f"{path}: not a readable ONNX model ({type(error).__name__})") from None


# ------------------------------------------------------------------------------ running

class OnnxModel:
    """An onnxruntime session called like the PyTorch network: N×3×S×S tensor → N×K logits (CPU tensor)."""

    def __init__(self, path, providers=("CPUExecutionProvider",)):
        import onnxruntime
        try:
            self.session = onnxruntime.InferenceSession(str(path), providers=list(providers))
        except Exception as error:  # onnxruntime's own errors (InvalidProtobuf, Fail, ...)
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ToolError(f"{path}: onnxruntime cannot load it ({first})") from None

    def __call__(self, images):
        array = images.detach().cpu().numpy().astype(np.float32, copy=False)
        return torch.from_numpy(self.session.run([OUTPUT_NAME], {INPUT_NAME: array})[0])


def providers_for(device):
    """onnxruntime providers for `--device auto|cpu|cuda` (CUDA needs onnxruntime-gpu)."""
    import onnxruntime
    has_cuda = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    if device == "cuda" and not has_cuda:
        raise DeviceUnavailable("--device cuda was requested but this onnxruntime has no CUDA provider "
                                "(install onnxruntime-gpu, or use --device cpu)")
    if device == "cpu" or not has_cuda:
        return ["CPUExecutionProvider"]
    return ["CUDAExecutionProvider", "CPUExecutionProvider"]


def load_onnx_classifier(path, device="auto"):
    """`(TrainedModel around an OnnxModel, label of where it runs)` for `predict --onnx`."""
    require("--onnx", ("onnxruntime", "onnx"))
    if not path.is_file():
        raise ToolError(f"--onnx {path}: no such file")
    meta = read_model_info(path)
    check_initializers(read_graph(path), path)
    model = OnnxModel(path, providers_for(device))
    check_fits(path, model, meta)
    info = export_info(path, meta, "onnx", num_tensors=0, num_parameters=meta.get("parameters") or 0)
    trained = TrainedModel(model, info, info.classes, info.size, info.image_size, info.augmentation)
    return trained, f"onnxruntime {model.session.get_providers()[0].removesuffix('ExecutionProvider')}"


def check_fits(path, model, meta):
    """The graph takes N×3×S×S and gives K logits, as `model_info.json` says (a JSON of another export fails)."""
    side, classes = meta["image_size"], len(meta["classes"])
    shape, outputs = list(model.session.get_inputs()[0].shape), model.session.get_outputs()[0].shape[-1]
    if shape[1:] != [3, side, side] or outputs != classes:
        raise CheckpointError(f"{path}: the graph takes {shape} and gives {outputs} "
                              f"logits, but its {EXPORT_INFO_FILE} says 3×{side}×{side} and {classes} classes")


# ------------------------------------------------------------------------------ inspect

def describe(path):
    """`(CheckpointInfo, extra lines)` of an ONNX export: its graph read with `onnx`, its JSON beside it."""
    require("inspecting an .onnx file", ("onnx",))
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    meta = read_model_info(path)
    proto = read_graph(path)
    initializers = proto.graph.initializer
    info = export_info(path, meta, "onnx", len(initializers), meta.get("parameters") or 0)
    opset = next((entry.version for entry in proto.opset_import if entry.domain in ("", "ai.onnx")), None)
    return info, [f"onnx:        opset {opset}, {_io(proto.graph.input[0])} → {_io(proto.graph.output[0])}, "
                  f"{len(initializers)} initializers ({sum(int(np.prod(t.dims)) for t in initializers):,} values)"]


def _io(value):
    dims = [d.dim_param or str(d.dim_value) for d in value.type.tensor_type.shape.dim]
    return f"{value.name} [{', '.join(dims)}]"

