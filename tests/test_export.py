"""Models users can ship: `export --format onnx|safetensors`, `predict --onnx`, the safetensors
path of `utils.inference` (predict, --evaluate) and inspect's SHA-256.

References are computed here: PyTorch's own logits of the same images, preprocessing written out
with numpy and PIL from the export's JSON, `hashlib` over the files, hand-written JSON.
"""
import contextlib
import hashlib
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from data_preprocessing.demo import DEMO_CLASSES
from helpers import tmpfs
from models import build_model
from utils.checkpoint import CheckpointError
from utils.inference import load_trained_model
from utils.tools import cli as tools

IMAGE_SIZE = 64
FER_CLASSES = "angry,disgust,fear,happy,sad,surprise,neutral"
REPO = Path(__file__).resolve().parent.parent


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def run_tool(*argv):
    """`(exit code, stdout, stderr)` of `python -m utils.tools ARGV`."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = tools.main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """`(tiny QCS in eval mode, its checkpoint in this project's format)`, logits spread like a trained model's."""
    torch.manual_seed(0)
    model = build_model("qcs", 7, size="tiny").eval()
    with torch.no_grad():
        model.base.vit.head.classifier.weight.mul_(300)
    path = tmp_path_factory.mktemp("checkpoint") / "qcs.pth"
    torch.save({"format": "qcs-fer-checkpoint", "config": model.config, "model": model.state_dict(),
                "classes": list(DEMO_CLASSES), "epoch": 3, "best_acc": 55.0, "best_epoch": 2,
                "run_config": {"dataset": "demo", "image_size": IMAGE_SIZE, "size": "tiny",
                               "augmentation": {"kind": "A"}}}, path)
    return model, path


def demo_images(demo_root, count=5):
    return sorted((demo_root / "images" / "test").glob("*.png"))[:count]


@pytest.fixture(scope="module")
def exported(checkpoint, demo_root, tmp_path_factory):
    """The checkpoint exported as ONNX and safetensors, checked on demo faces: `(folder, stdout)`."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    pytest.importorskip("safetensors")
    out = tmp_path_factory.mktemp("exported") / "model"
    code, stdout, err = run_tool("export", "--checkpoint", checkpoint[1], "--out", out, "--format", "onnx",
                                 "safetensors", "--check-images", *demo_images(demo_root, 8))
    assert code == 0, err
    return out, stdout


def by_hand(paths, info):
    """N×3×S×S float32 from image files, with only numpy and PIL, as model_info.json spells it out."""
    steps = info["preprocessing"]
    assert "center_crop" not in steps  # these checkpoints train with augmentation A
    mean, std = np.array(steps["mean"], np.float32), np.array(steps["std"], np.float32)
    arrays = [np.asarray(Image.open(p).convert("RGB").resize(steps["resize"][::-1], Image.BILINEAR), np.float32) / 255
              for p in paths]
    return np.stack([((a - mean) / std).transpose(2, 0, 1) for a in arrays]).astype(np.float32)


def onnx_tolerance(reference):
    return 1e-4 * max(1.0, float(reference.abs().max()))


# ------------------------------------------------------------------------------ ONNX

@pytest.mark.slow  # uses the module's ONNX export (about 6 s to build)
def test_onnx_runs_in_onnxruntime_alone_with_the_checkpoints_logits_at_any_batch(checkpoint, exported, demo_root):
    import onnx
    import onnxruntime
    model, _ = checkpoint
    out, stdout = exported
    info = json.loads((out / "model_info.json").read_text())
    assert info["onnx"]["opset"] == 20 and info["classes"] == DEMO_CLASSES and info["image_size"] == IMAGE_SIZE
    graph = onnx.load(str(out / "model.onnx"))
    assert [(o.domain, o.version) for o in graph.opset_import if o.domain in ("", "ai.onnx")] == [("", 20)]
    ops = {node.op_type for node in graph.graph.node}
    assert "Gelu" in ops and "Erf" not in ops  # the opset's own GELU, not the pattern OpenCV's DNN dies on
    assert info["max_abs_diff"]["onnx"] < info["tolerance"]["onnx"] and "8 images of --check-images" in stdout
    assert "onnxruntime max abs logit diff" in stdout and "ok" in stdout

    session = onnxruntime.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    images = demo_images(demo_root, 6)
    transform = load_trained_model(checkpoint[1]).transform()  # what predict --checkpoint uses
    torch.testing.assert_close(torch.from_numpy(by_hand(images, info)),  # the README's serving snippet
                               torch.stack([transform(Image.open(p).convert("RGB")) for p in images]),
                               atol=1e-5, rtol=0)
    for batch in (images[:1], images[1:]):  # 1 and 5: the batch dimension is dynamic
        x = by_hand(batch, info)
        logits = session.run(None, {"images": x})[0]
        with torch.no_grad():
            reference = model.base(torch.from_numpy(x))
        assert logits.shape == (len(batch), 7)
        torch.testing.assert_close(torch.from_numpy(logits), reference, atol=onnx_tolerance(reference), rtol=0)
        assert float(reference.abs().max()) > 1  # the tolerance is tested at a trained model's logit scale


@pytest.mark.slow  # uses the module's ONNX export (about 6 s to build)
def test_onnx_matches_pytorch_on_fer2013_faces(checkpoint, exported, shared_dir):
    import onnxruntime
    model, _ = checkpoint
    test_dir = shared_dir / "data" / "fer2013-mini" / "test"
    faces = [sorted((test_dir / c).glob("*.jpg"))[i] for c in ("angry", "happy", "surprise") for i in (0, 1)]
    info = json.loads((exported[0] / "model_info.json").read_text())
    x = by_hand(faces, info)  # 48×48 grayscale faces, upscaled and made RGB
    logits = onnxruntime.InferenceSession(str(exported[0] / "model.onnx")).run(None, {"images": x})[0]
    with torch.no_grad():
        reference = model.base(torch.from_numpy(x))
    torch.testing.assert_close(torch.from_numpy(logits), reference, atol=onnx_tolerance(reference), rtol=0)


@pytest.mark.slow  # uses the module's ONNX export (about 6 s to build)
def test_predict_onnx_gives_the_checkpoints_predictions(checkpoint, exported, demo_root, tmp_path):
    folder = tmp_path / "faces"
    folder.mkdir()
    for path in demo_images(demo_root, 6):
        shutil.copy(path, folder)
    (folder / "notes.txt").write_text("not an image")
    results = {}
    for flag, model_file in (("--checkpoint", checkpoint[1]), ("--onnx", exported[0] / "model.onnx")):
        out_json = tmp_path / f"{flag[2:]}.json"
        code, stdout, err = run_tool("predict", flag, model_file, "--no-detect", "--top-k", 2, "--batch-size", 4,
                                     "--json", out_json, folder)
        assert code == 0, err
        assert "notes.txt" in err
        results[flag] = json.loads(out_json.read_text())
        results[flag]["stdout"] = stdout
    onnx_rows, torch_rows = results["--onnx"]["predictions"], results["--checkpoint"]["predictions"]
    assert [r["image"] for r in onnx_rows] == [r["image"] for r in torch_rows] and len(onnx_rows) == 7
    for ours, reference in zip(onnx_rows, torch_rows):
        if reference["error"]:
            assert ours["error"] == reference["error"]
            continue
        assert ours["top_k"][0]["class"] == reference["top_k"][0]["class"]
        assert ours["probabilities"] == pytest.approx(reference["probabilities"], abs=1e-4)
    assert results["--onnx"]["classes"] == DEMO_CLASSES and results["--onnx"]["format"] == "onnx"
    assert "onnxruntime CPU" in results["--onnx"]["stdout"]


@pytest.mark.slow  # uses the module's ONNX export (about 6 s to build)
def test_predict_onnx_refuses_options_the_export_fixes_and_a_bad_json(exported, demo_root, tmp_path):
    image = demo_images(demo_root, 1)[0]
    code, _, err = run_tool("predict", "--onnx", exported[0] / "model.onnx", "--classes", "a,b", image)
    assert code == 2 and err == "error: --classes does not apply to --onnx: the export's model_info.json fixes the " \
                                "classes, model size and preprocessing\n"
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(exported[0] / "model.onnx", alone)
    code, _, err = run_tool("predict", "--onnx", alone / "model.onnx", "--no-detect", image)
    assert code == 2 and err.count("\n") == 1 and f"{alone / 'model_info.json'} is missing" in err
    info = json.loads((exported[0] / "model_info.json").read_text())
    (alone / "model_info.json").write_text(json.dumps({**info, "classes": ["a", "b", "c"], "num_classes": 3}))
    code, _, err = run_tool("predict", "--onnx", alone / "model.onnx", "--no-detect", image)
    assert code == 2 and err.count("\n") == 1 and "gives 7 logits" in err and "3 classes" in err


# ------------------------------------------------------------------------------ safetensors

@pytest.mark.slow  # uses the module's ONNX export (about 6 s to build)
def test_safetensors_round_trip_gives_identical_logits(checkpoint, exported, demo_root):
    model, path = checkpoint
    original = load_trained_model(path)
    loaded = load_trained_model(exported[0] / "model.safetensors")
    assert loaded.info.format == "safetensors" and loaded.classes == DEMO_CLASSES
    assert (loaded.size, loaded.image_size, loaded.augmentation) == ("tiny", IMAGE_SIZE, {"kind": "A"})
    assert loaded.info.dataset == "demo"
    transform = loaded.transform()
    x = torch.stack([transform(Image.open(p).convert("RGB")) for p in demo_images(demo_root)])
    assert torch.equal(x, torch.stack([original.transform()(Image.open(p).convert("RGB"))
                                       for p in demo_images(demo_root)]))
    with torch.no_grad():
        assert torch.equal(loaded.model(x), model.base(x))


@pytest.mark.slow  # uses the module's ONNX export (about 6 s to build)
def test_heatmaps_refuse_a_safetensors_export(exported, tmp_path):
    code, _, err = run_tool("heatmaps", "--checkpoint", exported[0] / "model.safetensors", "--dataset", "demo",
                            "--out", tmp_path / "maps.png")
    assert code == 2 and err.count("\n") == 1 and "holds the base branch only" in err


def test_evaluate_a_safetensors_export_gives_the_checkpoints_logits(trained_run, folder_data, tmp_path,
                                                                    monkeypatch):
    pytest.importorskip("safetensors")
    import utils.evaluation
    from utils.train import main
    out = tmp_path / "exported"
    code, _, err = run_tool("export", "--checkpoint", trained_run / "best.pth", "--out", out, "--format", "safetensors")
    assert code == 0, err
    logits, evaluate = [], utils.evaluation.evaluate

    def keep(*args, **kwargs):
        result = evaluate(*args, **kwargs)
        logits.append(result["logits"])
        return result

    monkeypatch.setattr(utils.evaluation, "evaluate", keep)
    for model_file in (trained_run / "best.pth", out / "model.safetensors"):
        argv = ["--evaluate", str(model_file), "--data-root", str(folder_data), "--workers", "0",
                "--predictions", str(tmp_path / f"{model_file.suffix[1:]}.csv")]
        assert main("qcs", argv) == 0
    assert len(logits) == 2 and len(logits[0]) == 6 and logits[0] == logits[1]  # exact fp32 values
    assert (tmp_path / "pth.csv").read_text() == (tmp_path / "safetensors.csv").read_text()


@pytest.mark.slow  # uses the module's ONNX export (about 6 s to build)
def test_safetensors_with_a_wrong_or_missing_json_or_tensors_is_one_line(exported, tmp_path):
    from safetensors.torch import load_file, save_file
    folder = tmp_path / "copy"
    shutil.copytree(exported[0], folder)
    weights, info_file = folder / "model.safetensors", folder / "model_info.json"
    info = json.loads(info_file.read_text())
    cases = [
        (None, f"{info_file} is missing"),
        ('{"classes": ["a", ', f"{info_file}: not valid JSON"),
        ({**info, "size": "small"}, "its tensors are of the tiny model, but model_info.json says small"),
        ({**info, "classes": ["a", "b"], "num_classes": 2}, "describes a 2-class base branch"),
        ({**info, "augmentation": {"kind": "B", "resize": 10}}, "invalid settings"),
        ({k: v for k, v in info.items() if k != "image_size"}, "'image_size' must be a whole number"),
    ]
    for content, expected in cases:
        info_file.unlink(missing_ok=True)
        if content is not None:
            info_file.write_text(content if isinstance(content, str) else json.dumps(content))
        with pytest.raises(CheckpointError) as caught:
            load_trained_model(weights)
        assert expected in str(caught.value) and "\n" not in str(caught.value)
    info_file.write_text(json.dumps(info))
    state = load_file(weights)
    state["vit.head.classifier.bias"] = torch.zeros(3)  # shaped for another head than the weight
    save_file(state, weights)
    code, _, err = run_tool("predict", "--checkpoint", weights, "--no-detect", info_file)
    assert code == 2 and err.count("\n") == 1 and "its tensors do not fit the tiny base branch" in err


# ------------------------------------------------------------------------------ inspect and the extras

@pytest.mark.slow  # uses the module's ONNX export (about 6 s to build)
def test_inspect_prints_the_files_sha256_for_every_format(checkpoint, exported, tmp_path):
    pytest.importorskip("onnx")
    out = exported[0]
    for path in (checkpoint[1], out / "model.safetensors", out / "model.onnx"):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        code, text, err = run_tool("inspect", path)
        assert code == 0, err
        assert f"\nsha256:      {digest}" in text and "classes:     7: Surprise" in text
        code, text, _ = run_tool("inspect", path, "--json")
        assert code == 0 and json.loads(text)["sha256"] == digest
    assert "opset 20" in run_tool("inspect", out / "model.onnx")[1]

    changed = tmp_path / "changed"
    shutil.copytree(out, changed)
    data = bytearray((changed / "model.safetensors").read_bytes())
    data[-1] ^= 1  # one bit of the last tensor: still readable, no longer the exported file
    (changed / "model.safetensors").write_bytes(bytes(data))
    code, text, _ = run_tool("inspect", changed / "model.safetensors")
    assert code == 0 and "differs from the one model_info.json lists" in text


def test_without_the_extras_the_formats_are_one_line_errors_naming_the_file(checkpoint, tmp_path, monkeypatch):
    for name in ("onnx", "onnxruntime", "safetensors", "safetensors.torch"):
        monkeypatch.setitem(sys.modules, name, None)  # import fails as if not installed
    code, _, err = run_tool("export", "--checkpoint", checkpoint[1], "--out", tmp_path / "a", "--format", "onnx")
    assert code == 2 and err.count("\n") == 1 and "pip install -r requirements-onnx.txt" in err
    image = tmp_path / "face.png"
    Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE)).save(image)
    code, _, err = run_tool("predict", "--onnx", tmp_path / "model.onnx", "--no-detect", image)
    assert code == 2 and err.count("\n") == 1 and "pip install -r requirements-onnx.txt" in err
    code, _, err = run_tool("export", "--checkpoint", checkpoint[1], "--out", tmp_path / "b", "--format", "safetensors")
    assert code == 2 and err.count("\n") == 1 and "pip install -r requirements-safetensors.txt" in err
    code, _, err = run_tool("inspect", tmp_path / "model.safetensors")
    assert code == 2 and err.count("\n") == 1 and "pip install -r requirements-safetensors.txt" in err
    code, _, err = run_tool("inspect", tmp_path / "model.onnx")
    assert code == 2 and err.count("\n") == 1 and "pip install -r requirements-onnx.txt" in err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


# ------------------------------------------------------------------------------ what export and inspect refuse

def test_export_overwrite_never_replaces_or_removes_the_checkpoint_it_exports(checkpoint, tmp_path):
    pytest.importorskip("safetensors")
    out = tmp_path / "export"
    code, _, err = run_tool("export", "--checkpoint", checkpoint[1], "--out", out, "--format", "safetensors")
    assert code == 0, err
    (tmp_path / "link.safetensors").symlink_to(out / "model.safetensors")
    (out / "renamed.safetensors").write_bytes((out / "model.safetensors").read_bytes())
    shutil.copy(checkpoint[1], out / "base_state_dict.pth")  # a checkpoint saved under the state dict's name
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    cases = [  # (--checkpoint, the file of --out the export would replace or remove, what it is)
        (out / "model.safetensors", out / "model.safetensors", "the checkpoint itself"),  # was removed
        (tmp_path / "link.safetensors", out / "model.safetensors", "the checkpoint itself"),
        (out / "renamed.safetensors", out / "model_info.json", "the model_info.json the checkpoint is read with"),
        (out / "base_state_dict.pth", out / "base_state_dict.pth", "the checkpoint itself"),  # was replaced
    ]
    for given, target, what in cases:
        code, stdout, err = run_tool("export", "--checkpoint", given, "--out", out, "--format", "torchscript",
                                     "--overwrite")
        assert (code, stdout) == (2, "")
        assert err == f"error: --checkpoint {given}: this export would replace or remove {target}, which is " \
                      f"{what}; export into another --out folder\n"
        assert {path.name: path.read_bytes() for path in out.iterdir()} == before


def safetensors_export(folder, **info):
    """A hand-made safetensors export of a tiny 7-class base branch, with `info` in its model_info.json."""
    from safetensors.torch import save_file
    folder.mkdir()
    torch.manual_seed(0)
    save_file(build_model("base", 7, size="tiny").state_dict(), folder / "model.safetensors")
    meta = {"classes": FER_CLASSES.split(","), "num_classes": 7, "arch": "base", "size": "tiny",
            "image_size": IMAGE_SIZE, "augmentation": {"kind": "A"}, **info}
    (folder / "model_info.json").write_text(json.dumps(meta))
    return folder / "model.safetensors"


def test_a_sha256_entry_that_is_not_a_mapping_of_hex_digests_is_one_line_naming_the_json(tmp_path):
    pytest.importorskip("safetensors")
    weights = safetensors_export(tmp_path / "good")
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    for case, listed in enumerate((["model.safetensors", digest], {"model.safetensors": 5},
                                   {"model.safetensors": "not-a-digest"}, {"model.safetensors": digest[:-1]},
                                   None, digest)):
        weights = safetensors_export(tmp_path / f"case{case}", sha256=listed)
        info_file = weights.with_name("model_info.json")
        expected = f"error: {info_file}: 'sha256' must map file names to 64-digit hex SHA-256 digests, got "
        for argv in (("inspect", weights), ("inspect", weights, "--json"),
                     ("predict", "--checkpoint", weights, "--no-detect", weights)):
            code, stdout, err = run_tool(*argv)
            assert code == 2 and stdout == "" and err.startswith(expected) and err.count("\n") == 1, err
    weights = safetensors_export(tmp_path / "upper", sha256={"model.safetensors": digest.upper()})
    code, stdout, _ = run_tool("inspect", weights)
    assert code == 0 and f"sha256:      {digest} (as listed in model_info.json)" in stdout


# ------------------------------------------------------------------------------ what a runtime needs

def readme_serving_snippet():
    """The README's ONNX serving snippet, as it is printed there."""
    text = (REPO / "utils" / "tools" / "README.md").read_text()
    start = text.index("```python", text.index("Serving the ONNX model"))
    return text[start + len("```python"):text.index("```", start + 3)]


def transparent_and_rotated_images(folder):
    """Image kinds a user sends: RGBA and LA with clear areas (their stored colour must not count), a
    palette with a transparent entry, an RGB photo whose EXIF says 'rotate 90°' and a 16-bit grayscale one."""
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, (70, 50, 3), dtype=np.uint8)
    pixels[:, :20] = 0  # stored black under the clear part: dropping alpha instead of compositing shows
    alpha = np.where(np.arange(50) < 20, 0, 255).astype(np.uint8)[None].repeat(70, 0)
    alpha[:10] = 128  # half transparent too
    rgba = Image.fromarray(np.dstack([pixels, alpha]), "RGBA")
    rgba.save(folder / "rgba.png")
    rgba.convert("LA").save(folder / "la.png")
    palette = Image.fromarray(pixels).quantize(32)
    palette.save(folder / "palette.png", transparency=palette.getpixel((0, 0)))  # the black entry is clear
    exif = Image.Exif()
    exif[0x0112] = 6  # EXIF orientation: rotate 90° clockwise to view
    Image.fromarray(pixels).save(folder / "rotated.png", exif=exif)
    Image.fromarray(pixels[..., 0].astype(np.uint16) * 257).save(folder / "grey16.png")  # 16-bit grayscale
    return [folder / name for name in ("rgba.png", "la.png", "palette.png", "rotated.png", "grey16.png")]


@pytest.mark.slow  # uses the module's ONNX export (about 6 s to build)
def test_the_readme_serving_snippet_gives_predicts_logits_on_every_image_kind(checkpoint, exported, tmp_path):
    pytest.importorskip("onnxruntime")
    folder, _ = exported
    images = transparent_and_rotated_images(tmp_path)
    out_json = tmp_path / "p.json"
    code, _, err = run_tool("predict", "--checkpoint", checkpoint[1], "--no-detect", "--json", out_json, *images)
    assert code == 0, err
    predicted = {Path(row["image"]).name: list(row["probabilities"].values())
                 for row in json.loads(out_json.read_text())["predictions"]}
    snippet = readme_serving_snippet().replace("exported/", f"{folder}/")
    transform = load_trained_model(checkpoint[1]).transform()
    for image in images:
        scope = {}
        with contextlib.redirect_stdout(io.StringIO()):
            exec(snippet.replace('"face.png"', repr(str(image))), scope)  # noqa: S102 - the README's own code
        probabilities = torch.softmax(torch.from_numpy(scope["logits"][0]).double(), 0).tolist()
        assert probabilities == pytest.approx(predicted[image.name], abs=1e-5), image.name
        with torch.no_grad():  # the same input without the white background differs: the test can fail
            plain = Image.open(image).convert("RGB")
            dropped = torch.softmax(checkpoint[0].base(transform(plain)[None])[0], 0)
        if image.name not in ("rotated.png", "grey16.png"):
            assert max(abs(a - b) for a, b in zip(dropped.tolist(), predicted[image.name])) > 1e-3, image.name


def test_model_info_says_what_a_runtime_needs_and_ships_no_local_path(checkpoint, tmp_path):
    out = tmp_path / "exported"
    code, _, err = run_tool("export", "--checkpoint", checkpoint[1], "--out", out, "--format", "torchscript")
    assert code == 0, err
    text = (out / "model_info.json").read_text()
    info = json.loads(text)
    steps = info["preprocessing"]
    assert steps["resize"] == [IMAGE_SIZE, IMAGE_SIZE] and steps["resize_order"].startswith("[height, width]")
    assert steps["interpolation"] == "bilinear (PIL)" and steps["antialias"] is True
    assert "composited onto white (255, 255, 255)" in steps["colour"] and "EXIF orientation" in steps["colour"]
    assert steps["face"]["aligned"] is True and len(steps["face"]["template"]) == 5
    assert info["source_checkpoint"] == "qcs.pth"
    assert info["source_sha256"] == hashlib.sha256(checkpoint[1].read_bytes()).hexdigest()
    assert str(checkpoint[1].parent) not in text and str(tmp_path) not in text


@pytest.mark.slow  # uses the module's ONNX export (about 6 s to build)
def test_opencv_dnn_loads_the_onnx_export_and_gives_its_logits(checkpoint, exported, demo_root, tmp_path):
    pytest.importorskip("cv2")
    folder, _ = exported
    info = json.loads((folder / "model_info.json").read_text())
    x = by_hand(demo_images(demo_root, 5), info)
    np.save(tmp_path / "x.npy", x)
    code = ("import sys, numpy as np, cv2; net = cv2.dnn.readNetFromONNX(sys.argv[1]); "
            "net.setInput(np.load(sys.argv[2])); np.save(sys.argv[3], net.forward())")
    # a separate process: opset 18's spelling of GELU made OpenCV's DNN die with a segmentation fault
    result = subprocess.run([sys.executable, "-c", code, str(folder / "model.onnx"), str(tmp_path / "x.npy"),
                             str(tmp_path / "y.npy")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    with torch.no_grad():
        reference = checkpoint[0].base(torch.from_numpy(x))
    torch.testing.assert_close(torch.from_numpy(np.load(tmp_path / "y.npy")), reference,
                               atol=onnx_tolerance(reference), rtol=0)


# ------------------------------------------------------------------------------ non-finite weights, failed exports

def with_nan_weight(source_folder, folder):
    """A copy of an ONNX export whose first floating-point initializer holds a NaN, its JSON beside it."""
    import onnx
    from onnx import numpy_helper
    folder.mkdir()
    graph = onnx.load(str(source_folder / "model.onnx"))
    tensor = next(t for t in graph.graph.initializer if numpy_helper.to_array(t).dtype.kind == "f")
    array = numpy_helper.to_array(tensor).copy()
    array.flat[0] = np.nan
    tensor.CopyFrom(numpy_helper.from_array(array, tensor.name))
    onnx.save(graph, str(folder / "model.onnx"))
    shutil.copy(source_folder / "model_info.json", folder)
    return folder / "model.onnx", tensor.name


@pytest.mark.slow  # uses the module's ONNX export (about 6 s to build)
def test_an_onnx_file_with_a_nan_weight_is_refused(exported, tmp_path):
    import onnx

    from utils.tools import onnx_model
    model_file, name = with_nan_weight(exported[0], tmp_path / "damaged")
    image = tmp_path / "face.png"
    Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE)).save(image)
    code, stdout, err = run_tool("predict", "--onnx", model_file, "--no-detect", image)
    assert code == 2 and stdout == "" and "nan%" not in err
    assert err == (f"error: {model_file}: 1 initializers hold NaN or infinite values (e.g. {name}); "
                   f"the weights are damaged\n")
    with pytest.raises(CheckpointError, match="1 initializers hold NaN"):  # the export's own check of its graph
        onnx_model.check_initializers(onnx.load(str(model_file)), model_file)


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_an_export_that_fails_at_check_images_leaves_the_folder_as_it_was(checkpoint, tmp_path):
    out = tmp_path / "exported"
    out.mkdir()
    earlier = {"model_info.json": b'{"an": "earlier export"}', "model_torchscript.pt": b"earlier model",
               "base_state_dict.pth": b"earlier weights", "notes.txt": b"mine"}
    for name, data in earlier.items():
        (out / name).write_bytes(data)
    broken = tmp_path / "face.png"
    broken.write_text("not an image")
    code, _, err = run_tool("export", "--checkpoint", checkpoint[1], "--out", out, "--format", "torchscript",
                            "--overwrite", "--check-images", broken)
    assert code == 2 and err.startswith(f"error: --check-images {broken}: cannot read it")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == earlier  # nothing new, nothing hidden left

    fresh = tmp_path / "new" / "deeper" / "exported"
    code, _, _ = run_tool("export", "--checkpoint", checkpoint[1], "--out", fresh, "--format", "torchscript",
                          "--check-images", broken)
    assert code == 2 and sorted(p.name for p in tmp_path.iterdir()) == ["exported", "face.png"]


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_an_export_killed_part_way_is_cleaned_up_by_the_next_one(checkpoint, tmp_path):
    out = tmp_path / "exported"
    stage = out / ".export-in-progress"  # what a SIGKILL during the writes leaves: a half-written stage
    stage.mkdir(parents=True)
    (stage / "model_torchscript.pt").write_bytes(b"half a model")
    code, _, err = run_tool("export", "--checkpoint", checkpoint[1], "--out", out, "--format", "torchscript")
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["base_state_dict.pth", "model_info.json", "model_torchscript.pt"]


@pytest.fixture
def small_filesystem(tmp_path):
    """A real 3 MiB filesystem (tmpfs; skipped where mounting is not allowed), which an export of
    every format fills part-way."""
    with tmpfs(tmp_path / "small", "size=3M") as mount:
        yield mount


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_an_export_that_fills_the_disk_leaves_nothing_behind(checkpoint, small_filesystem):
    out = small_filesystem / "exported"
    code, _, err = run_tool("export", "--checkpoint", checkpoint[1], "--out", out, "--format", "both")
    assert code == 2
    assert err == f"error: --out {out / 'model_exported.pt2'}: no space left on device (ENOSPC while writing)\n"
    assert list(small_filesystem.iterdir()) == []  # not even the --out folder it created


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_an_export_that_fails_its_check_writes_nothing(checkpoint, tmp_path, monkeypatch):
    from utils.tools import export
    monkeypatch.setattr(export, "TOLERANCE", 0.0)  # reloaded PyTorch files are bit-identical: 0 < 0 fails
    out = tmp_path / "exported"
    code, stdout, err = run_tool("export", "--checkpoint", checkpoint[1], "--out", out, "--format", "torchscript")
    assert code == 1 and "FAILED" in stdout and f"{out / 'model_torchscript.pt'}" in stdout
    assert err == f"nothing written to {out}: a reloaded file does not give the checkpoint's logits\n"
    assert not out.exists()
