"""The speed benchmark (`python -m utils.tools.benchmark`) at the tiny size: the report's structure,
invariants between its numbers and hand-worked values. No timing is asserted."""
from contextlib import nullcontext

import pytest
import torch
from PIL import Image

from models import build_model
from utils.recipes import RELEASED
from utils.tools import bench_data, bench_model, benchmark


def tiny_args(*extra):
    args = benchmark.build_parser().parse_args(["--size", "tiny", "--batch", "2", "--repeats", "2",
                                                "--warmup", "1", "--arch", "base", "qcs", "--augment-batches", "1",
                                                "--inference-batches", "1", "4",
                                                "--inference-variants", "fp32", "bf16+cl", *extra])
    args.device = torch.device("cpu")
    return args


@pytest.fixture(scope="module")
def report():
    texts = []
    results = benchmark.run(tiny_args(), emit=texts.append)
    return results, "\n".join(texts)


@pytest.mark.slow  # over a few seconds on 2 CPU cores
def test_train_rows_compare_batched_with_per_branch(report):
    results, _ = report
    base, qcs = results["train"]
    assert "per-branch s/step" not in base and "speedup" not in base
    for name in ("batched", "per-branch"):
        assert qcs[f"{name} anchors/s"] == pytest.approx(2 / qcs[f"{name} s/step"])
    assert qcs["speedup"] == pytest.approx(qcs["per-branch s/step"] / qcs["batched s/step"])
    assert 0.0 <= qcs["loss_max_abs_diff"] < 1e-5  # float32: the two implementations agree


def test_per_branch_reference_equals_the_model_and_the_check_can_fail(monkeypatch):
    torch.manual_seed(0)
    model = build_model("qcs", 7, size="tiny").double().train()
    images, y, y_n = bench_model.make_group("qcs", 3, "tiny", torch.device("cpu"))
    images = [x.double() for x in images]
    for a, b in zip(model(*images), model.forward_per_branch(*images)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
    assert bench_model.first_pass_difference(model, images, y, y_n) < 1e-10
    # without the per-branch batch-norm statistics the batched call mixes branches: it must show
    monkeypatch.setattr(model.base.backbone, "branch_groups", lambda num_groups: nullcontext())
    assert bench_model.first_pass_difference(model, images, y, y_n) > 1e-4


def test_epoch_estimates_hand_worked():
    estimates = bench_model.epoch_estimates([dict(arch="base", **{"batched anchors/s": 10.0}),
                                           dict(arch="qcs", **{"batched anchors/s": 2.0})])
    assert [(e["arch"], e["dataset"]) for e in estimates] == [
        ("qcs", "RAF-DB"), ("qcs", "FERPlus"), ("qcs", "AffectNet-8")]
    raf, ferplus, affectnet = estimates
    assert raf["epoch_s"] == pytest.approx(12271 / 2) and raf["recipe_s"] == pytest.approx(200 * 12271 / 2)
    assert ferplus["epochs"] == 150
    assert affectnet["anchors"] == 287651 // 12 and affectnet["epochs"] == 100  # QCS: len // 12


@pytest.mark.slow  # over a few seconds on 2 CPU cores
def test_inference_cost_sampling_and_memory(report):
    results, text = report
    rows = results["inference"]
    assert [(r["variant"], r["batch"]) for r in rows] == [("fp32", 1), ("bf16+cl", 1), ("fp32", 4), ("bf16+cl", 4)]
    for r in rows:
        assert r["images_per_s"] * r["ms_per_image"] / 1000 == pytest.approx(1.0)
    for fp32, fast in (rows[:2], rows[2:]):
        assert fp32["speedup"] == 1.0 and fp32["max_abs_diff"] == 0.0 and fp32["top1_agreement"] == 1.0
        assert fast["speedup"] == pytest.approx(fp32["ms_per_image"] / fast["ms_per_image"])
        assert 0.0 < fast["max_abs_diff"] < 0.1  # bf16 moves the logits, a little
    base, qcs = results["cost"]
    assert base["cross_params"] == 0 < qcs["cross_params"] and qcs["base_params"] == base["base_params"]
    shuffled, balanced = results["sampling"]
    assert shuffled["groups"] == sum(bench_data.AFFECTNET_COUNTS) and balanced["groups"] == 287651 // 12
    assert results["memory"] is None and "skipped: needs CUDA" in text
    for heading in ("Training step", "Epoch time", "Inference", "Cost", "QCS group sampling", "Training data"):
        assert heading in text
    assert "met" not in text.split()  # figures only, no verdicts


@pytest.mark.slow  # over a few seconds on 2 CPU cores
def test_augment_rows_cover_every_released_transform(report):
    results, text = report
    rows = results["augment"]
    assert [r["transform"] for r in rows] == ["A", "B(234, ±10°)", "B(232, ±10°)", "B(236, ±12°, erase 0.03-0.1)",
                                              "A, no jitter"]
    recipes = [recipe for r in rows for recipe in r["recipes"].split(", ")]
    assert sorted(recipes) == sorted(f"{arch.upper()} {dataset}" for arch, dataset in RELEASED)
    for r in rows:
        assert min(r["released_ms"], r["worker_ms"], r["device_ms"]) > 0
        assert r["worker_ratio"] == pytest.approx(r["released_ms"] / r["worker_ms"])
        assert r["total_ratio"] == pytest.approx(r["released_ms"] / (r["worker_ms"] + r["device_ms"]))
    assert "100x100 JPEG to 224 px" in text and "on cpu (batches of 24)" in text


def test_sample_jpeg_is_a_100_pixel_rgb_jpeg(tmp_path):
    with Image.open(bench_data.sample_jpeg(tmp_path)) as image:
        assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (100, 100))


def test_alternating_order():
    calls = []
    runs = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    times = bench_model.alternating_times(runs, repeats=3, warmup=1, device=torch.device("cpu"))
    assert calls == ["a", "b"] + ["a", "b", "b", "a", "a", "b"]
    assert [len(times["a"]), len(times["b"])] == [3, 3]


@pytest.mark.parametrize("argv,message", [(["--batch", "0"], "--batch"), (["--repeats", "0"], "--repeats"),
                                          (["--arch", "vgg"], "--arch")])
def test_bad_flags_are_named(capsys, argv, message):
    with pytest.raises(SystemExit):
        benchmark.main(argv)
    assert message in capsys.readouterr().err


def test_cuda_without_cuda_is_one_line(capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert benchmark.main(["--device", "cuda", "--parts", "cost"]) == 2
    assert "CUDA is not available" in capsys.readouterr().err


def test_webcam_rows_find_the_face_in_every_frame(face_extra, shared_dir):
    face = shared_dir / "data" / "fer2013-mini" / "test" / "surprise" / "PrivateTest_10712253.jpg"
    texts = []
    results = benchmark.run(tiny_args("--parts", "webcam", "--webcam-face", str(face), "--webcam-frames", "2"),
                            emit=texts.append)
    rows = results["webcam"]
    assert [row["in_flight"] for row in rows] == [1, 2] and all(row["frames"] == 2 for row in rows)
    assert all(row["faces"] == 1 and row["fps"] > 0 and row["model_ms"] > 0 for row in rows)
    assert "frames/s" in texts[-1]


def test_webcam_without_a_face_says_so():
    texts = []
    assert benchmark.run(tiny_args("--parts", "webcam"), emit=texts.append)["webcam"] is None
    assert "skipped: needs --webcam-face" in texts[-1]
