"""Model structure, CSA math, invariants and weight loading (models/METHOD.md)."""
import math
from contextlib import nullcontext

import pytest
import torch

import models.csa as csa
from authors_format import as_authors, write_authors_checkpoint
from models import (
    ARCHS,
    DISTILL_CHOICES,
    MODEL_SIZES,
    TEMPERATURE_DISTILLS,
    CheckpointError,
    build_model,
    count_parameters,
    distill_loss,
    group_loss,
    inference_model,
    load_weights,
)
from models.qcs import BilinearHead
from utils.checkpoint import read_checkpoint


def tiny(arch, num_classes=7, **options):
    torch.manual_seed(0)
    return build_model(arch, num_classes, size="tiny", **options)


def images(n, batch=2, seed=1, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 3, 48, 48, generator=g, dtype=dtype) for _ in range(n)]


OPTION_GRID = [dict(attention=a, matrix=m, connection=c)
               for a in ("csa", "sdpa") for m in ("sd", "s", "d") for c in ("vit", "gap", "bp")]


@pytest.mark.parametrize("options", OPTION_GRID, ids=lambda o: "-".join(o.values()))
@pytest.mark.parametrize("arch,num_classes", [("dcs", 7), ("qcs", 8)])
def test_output_shapes_every_option(arch, num_classes, options):
    model = tiny(arch, num_classes, **options)
    group = images(ARCHS[arch])
    for train in (True, False):
        model.train(train)
        outputs = model(*group)
        assert len(outputs) == 2 * len(group)
        assert all(o.shape == (2, num_classes) for o in outputs)
        assert model(group[0]).shape == (2, num_classes)


def test_base_arch_and_sizes():
    base = tiny("base")
    assert base(images(1)[0]).shape == (2, 7)
    assert set(MODEL_SIZES) >= {"paper", "small", "tiny"}
    assert count_parameters(base) < 1e6


def test_branches_per_architecture():
    assert ARCHS == {"base": 1, "dcs": 2, "qcs": 4}
    assert (tiny("dcs").num_branches, tiny("qcs").num_branches) == (2, 4)
    with pytest.raises(ValueError, match="takes 1 or 4 images, got 2"):
        tiny("qcs").forward_per_branch(*images(2))


def test_dcs_swapping_anchor_and_positive_swaps_outputs():
    model = tiny("dcs").double().eval()
    a, p = images(2, dtype=torch.float64)
    ba, bp, ca, cp = model(a, p)
    bp2, ba2, cp2, ca2 = model(p, a)
    for x, y in ((ba, ba2), (bp, bp2), (ca, ca2), (cp, cp2)):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-12)


@pytest.mark.parametrize("order", [(2, 3, 0, 1), (1, 0, 3, 2)], ids=["12<->34", "1<->2,3<->4"])
def test_qcs_central_symmetry_permutes_outputs(order):
    model = tiny("qcs").double().eval()
    with torch.no_grad():
        for block in model.cross_blocks:
            block.theta.fill_(0.4)  # exercise k != 1
    group = images(4, dtype=torch.float64)
    outputs = model(*group)
    permuted = model(*[group[i] for i in order])
    for branch, source in enumerate(order):
        torch.testing.assert_close(permuted[branch], outputs[source], rtol=0, atol=1e-12)
        torch.testing.assert_close(permuted[4 + branch], outputs[4 + source], rtol=0, atol=1e-12)


def test_qcs_asymmetric_swap_changes_outputs():
    """Swapping only the anchor with a negative breaks the S/D roles: outputs must change."""
    model = tiny("qcs").double().eval()
    group = images(4, dtype=torch.float64)
    out = model(*group)
    swapped = model(group[2], group[1], group[0], group[3])
    assert (swapped[4] - out[6]).abs().max() > 1e-6


@pytest.mark.parametrize("arch", ["dcs", "qcs"])
def test_spatial_weights_sum_to_one(arch):
    model = tiny(arch, attention="csa").eval()
    maps = model.csa_maps(*images(ARCHS[arch]))
    assert maps.shape[:2] == (3, ARCHS[arch])
    torch.testing.assert_close(maps.sum(-1), torch.ones(maps.shape[:-1]))
    assert (maps >= 0).all()


def test_weight_maps_from_tokens_equal_those_from_images():
    model = tiny("qcs").eval()
    group = images(4)
    tokens = torch.stack([model.base.forward_features(x)[1] for x in group])  # G×B×T×C, image by image
    torch.testing.assert_close(model.csa_maps(base_tokens=tokens), model.csa_maps(*group), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="not both"):
        model.csa_maps(*group, base_tokens=tokens)


def test_csa_fusion_hand_worked_2x2():
    """k = 1 (θ = 0): w_1 = softmax(agg(S₁₂ wrt 1) + agg(D₁₃ wrt 1)), worked by hand."""
    q1 = torch.tensor([[[0.0, 0.0], [3.0, 4.0]]])
    q2 = torch.tensor([[[0.0, 0.0], [0.0, 0.0]]])
    q3 = torch.tensor([[[0.0, 0.0], [0.0, 3.0]]])
    q4 = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    # D12 = [[0,0],[5,5]] (min 0) → S12 = 5 − D12 = [[5,5],[0,0]].
    # Image 1 is on the row side: L2-normalise S12's columns, sum each row → [1+1, 0+0] = [2, 0].
    s_term = [2.0, 0.0]
    # D13 = cdist(q1, q3) = [[0, 3], [5, √10]] (min 0, kept as is).
    # Columns normalised: [0,5]/5 = [0,1] and [3,√10]/√19 → row sums [3/√19, 1 + √10/√19].
    d_term = [3 / math.sqrt(19), 1 + math.sqrt(10) / math.sqrt(19)]
    z = [s + d for s, d in zip(s_term, d_term)]
    expected_w1 = [math.exp(v) / sum(math.exp(u) for u in z) for v in z]
    # Image 3 is on D13's column side: rows normalised [0,1] and [5,√10]/√35, summed over rows.
    d13_for_3 = [5 / math.sqrt(35), 1 + math.sqrt(10) / math.sqrt(35)]
    weights = csa.csa_weights([q1, q2, q3, q4], k=1.0)
    torch.testing.assert_close(weights[0][0], torch.tensor(expected_w1), rtol=0, atol=1e-6)
    s_only = csa.csa_weights([q1, q2, q3, q4], k=1.0, matrix="s")[0][0]
    torch.testing.assert_close(s_only, torch.softmax(torch.tensor(s_term), 0), rtol=0, atol=1e-6)
    d_only = csa.csa_weights([q1, q2, q3, q4], k=1.0, matrix="d")[2][0]
    torch.testing.assert_close(d_only, torch.softmax(torch.tensor(d13_for_3), 0), rtol=0, atol=1e-6)


def test_min_and_max_are_over_the_whole_batch():
    """Released behaviour: the S flip uses the max over all samples, coupling the batch."""
    q_y = torch.tensor([[[0.0, 0.0]], [[0.0, 0.0]]])
    q_x = torch.tensor([[[1.0, 0.0]], [[4.0, 0.0]]])
    # distances 1 and 4; global min 1 → D = [0, 3]; global max 3 → S = [3, 0]
    assert csa.similarity_matrix(q_y, q_x).flatten().tolist() == [3.0, 0.0]


@pytest.mark.parametrize("arch,expected", [("dcs", 1), ("qcs", 4)])
def test_one_distance_matrix_per_pair(monkeypatch, arch, expected):
    calls = []
    real = torch.cdist
    monkeypatch.setattr(csa.torch, "cdist", lambda a, b: calls.append(a.shape) or real(a, b))
    model = tiny(arch).eval()
    model(*images(ARCHS[arch]))
    assert len(calls) == 3 * expected  # per level
    assert all(len(shape) == 3 for shape in calls)  # B×N×C: no B×N×N×C intermediate


def test_training_step_reaches_every_parameter():
    model = tiny("qcs").train()
    group = images(4, batch=3)
    y, y_n = torch.tensor([0, 1, 2]), torch.tensor([3, 4, 5])
    loss, per_output = group_loss(model(*group), y, y_n)
    assert per_output.shape == (8,)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert all(block.theta.grad.abs() > 0 for block in model.cross_blocks)


def test_group_loss_is_mean_of_eight_cross_entropies():
    torch.manual_seed(0)
    outputs = [torch.randn(3, 7) for _ in range(8)]
    y, y_n = torch.tensor([0, 1, 2]), torch.tensor([4, 5, 6])
    targets = [y, y, y_n, y_n, y, y, y_n, y_n]
    by_hand = []
    for logits, target in zip(outputs, targets):
        log_probs = logits - logits.exp().sum(1, keepdim=True).log()
        by_hand.append(-log_probs[torch.arange(3), target].mean())
    loss, _ = group_loss(outputs, y, y_n)
    torch.testing.assert_close(loss, torch.stack(by_hand).mean())


def test_bilinear_pooling_as_released_on_2x2_tokens():
    """Pools base + cross with cross (the release's call site); sqrt(|x| + 1e-5), L2 norm, ×100."""
    base = torch.tensor([[[1.0, 2e-4], [-4.0, -2.0]]], dtype=torch.float64)  # B=1, N=2 tokens, C=2
    cross = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]], dtype=torch.float64)
    # residual r = base + cross = [[2, 2e-4], [-4, 0]]; X[c, d] = Σ_n r[n, c] · cross[n, d] / 2:
    # X = [[(2·1 + -4·0)/2, (2·0 + -4·2)/2], [(2e-4·1 + 0)/2, (0 + 0·2)/2]] = [[1, -4], [1e-4, 0]]
    signed_root = [math.sqrt(1 + 1e-5), -math.sqrt(4 + 1e-5), math.sqrt(1e-4 + 1e-5), 0.0]
    norm = math.sqrt(sum(v * v for v in signed_root))  # √(5 + 3e-5 + 1e-4)
    expected = [100 * v / norm for v in signed_root]
    head = BilinearHead(2, 4).double()
    with torch.no_grad():
        head.classifier.weight.copy_(torch.eye(4))
        head.classifier.bias.zero_()
    torch.testing.assert_close(head(base, cross)[0], torch.tensor(expected, dtype=torch.float64),
                               rtol=0, atol=1e-9)


def test_distill_choices_and_their_temperatures():
    assert DISTILL_CHOICES == ("none", "kl", "l2", "kl-detached", "mse")
    assert TEMPERATURE_DISTILLS == ("kl", "kl-detached")


def test_released_l2_is_the_euclidean_distance_of_the_batch_over_b():
    student = torch.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    teacher = torch.tensor([[1.0, 0.0], [0.0, 0.0]], requires_grad=True)
    loss = distill_loss(student, teacher, "l2")
    # differences (0, 2, 3, 4): √(4 + 9 + 16) / B = √29 / 2 (a mean squared error would be 29/4)
    assert loss.item() == pytest.approx(math.sqrt(29) / 2)
    loss.backward()
    # d/dteacher = −(student − teacher) / (√29 · B): the teacher is not detached
    expected = [[0.0, -2 / (2 * math.sqrt(29))], [-3 / (2 * math.sqrt(29)), -4 / (2 * math.sqrt(29))]]
    torch.testing.assert_close(teacher.grad, torch.tensor(expected))
    equal = torch.ones(2, 3, requires_grad=True)
    distill_loss(equal, torch.ones(2, 3), "l2").backward()
    assert equal.grad.tolist() == [[0.0] * 3] * 2  # a zero gradient at distance 0, not NaN


def test_released_kl_reaches_the_teacher_and_the_detached_form_does_not():
    # T = 2: student/T = (0, 1), teacher/T = (1, 0); p = softmax(teacher/T) = (e, 1)/(1 + e),
    # log p − log q = (1, −1), so KL = (e − 1)/(e + 1) = tanh(1/2), times T² = 4.
    e = math.e
    for kind, teacher_reached in (("kl", True), ("kl-detached", False)):
        student = torch.tensor([[0.0, 2.0]], requires_grad=True)
        teacher = torch.tensor([[2.0, 0.0]], requires_grad=True)
        loss = distill_loss(student, teacher, kind, temperature=2.0)
        assert loss.item() == pytest.approx(4 * math.tanh(0.5))
        loss.backward()
        # d/dstudent = T · (q − p) = 2 · ((1 − e), (e − 1)) / (1 + e)
        torch.testing.assert_close(student.grad, torch.tensor([[2 * (1 - e) / (1 + e), 2 * (e - 1) / (1 + e)]]))
        if teacher_reached:  # d/dteacher_j = T · p_j · ((log p − log q)_j − KL) = ±4e/(1 + e)²
            torch.testing.assert_close(teacher.grad, torch.tensor([[4 * e / (1 + e) ** 2, -4 * e / (1 + e) ** 2]]))
        else:
            assert teacher.grad is None


@pytest.mark.parametrize("kind,added,cross_a_grad", [
    # weight 0.5 times the mean over the two branches; the positive's base equals its cross logits (term 0)
    ("kl", math.tanh(0.5), [math.e / (1 + math.e) ** 2, -math.e / (1 + math.e) ** 2]),
    ("kl-detached", math.tanh(0.5), [0.0, 0.0]),
    ("l2", 0.5 * math.sqrt(8) / 2, [0.25 / math.sqrt(2), -0.25 / math.sqrt(2)]),  # |(−2, 2)| = √8
    ("mse", 0.5 * 4 / 2, [0.0, 0.0]),  # mean of (−2)², 2²
])
def test_group_loss_adds_the_distillation_term_per_branch(kind, added, cross_a_grad):
    def loss_and_grads(distill):
        outputs = [torch.tensor([[0.0, 2.0]]), torch.tensor([[1.0, 1.0]]),  # base_a, base_p
                   torch.tensor([[2.0, 0.0]]), torch.tensor([[1.0, 1.0]])]  # cross_a, cross_p
        for o in outputs:
            o.requires_grad_(True)
        loss, _ = group_loss(outputs, torch.tensor([0]), None, distill, distill_weight=0.5, temperature=2.0)
        loss.backward()
        return loss.item(), [o.grad for o in outputs]

    (plain, plain_grads), (loss, grads) = loss_and_grads("none"), loss_and_grads(kind)
    assert loss - plain == pytest.approx(added)
    torch.testing.assert_close(grads[2] - plain_grads[2], torch.tensor([cross_a_grad]))
    assert torch.isfinite(grads[1]).all() and torch.isfinite(grads[3]).all()


@pytest.mark.parametrize("arch", ["dcs", "qcs"])
def test_batched_branches_equal_per_branch(arch):
    """Train mode: one batched backbone call gives the per-branch results and BN statistics."""
    batched, per_branch, by_hand = tiny(arch).double(), tiny(arch).double(), tiny(arch).double()
    group = images(ARCHS[arch], batch=3, dtype=torch.float64)
    out_batched, out_per_branch = batched(*group), per_branch.forward_per_branch(*group)
    for a, b in zip(out_batched, out_per_branch):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
    # the per-branch reference is what it says: the base network called on each image in turn
    for a, x in zip(out_per_branch, group):
        torch.testing.assert_close(a, by_hand.base(x), rtol=0, atol=0)
    for reference in (per_branch, by_hand):
        for (name, a), b in zip(batched.state_dict().items(), reference.state_dict().values()):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-12, msg=name)


def test_batching_without_per_branch_batch_norm_would_show(monkeypatch):
    """The comparison above can fail: one batch norm over all branches changes every output."""
    model = tiny("qcs").double()
    group = images(4, batch=3, dtype=torch.float64)
    monkeypatch.setattr(model.base.backbone, "branch_groups", lambda num_groups: nullcontext())
    differences = [(a - b).abs().max().item()
                   for a, b in zip(model(*group), model.forward_per_branch(*group))]
    assert min(differences) > 1e-4


def test_backbone_checkpointing_changes_nothing():
    plain = tiny("qcs").double()
    checkpointed = build_model("qcs", 7, size="tiny", checkpoint_backbone=True).double()
    checkpointed.load_state_dict(plain.state_dict())
    group = images(4, dtype=torch.float64)
    y = torch.tensor([0, 1])
    for model in (plain, checkpointed):
        group_loss(model(*group), y, y + 1)[0].backward()
    for (name, a), b in zip(plain.named_parameters(), checkpointed.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=1e-10, msg=name)
    for (name, a), b in zip(plain.named_buffers(), checkpointed.buffers()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)  # BN stats updated once


def test_inference_model_is_the_base_branch():
    model = tiny("qcs").eval()
    base = inference_model(model)
    x = images(1)[0]
    torch.testing.assert_close(base(x), model(x), rtol=0, atol=0)
    assert count_parameters(base) == count_parameters(model) - sum(
        count_parameters(m) for m in (model.cross_blocks, model.cross_head))


@pytest.mark.parametrize("kwargs,message", [
    (dict(arch="xcs", num_classes=7), "unknown arch"),
    (dict(arch="qcs", num_classes=7, matrix="x"), "unknown matrix"),
    (dict(arch="qcs", num_classes=7, connection="mlp"), "unknown connection"),
    (dict(arch="qcs", num_classes=7, size="huge"), "unknown size"),
    (dict(arch="qcs", num_classes=7, drop=1.5), "drop must be in"),
])
def test_bad_options_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_model(**kwargs)


def test_proj_drop_rule_follows_class_count():
    seven = build_model("dcs", 7, size="tiny", cross_drop=0.2)
    eight = build_model("dcs", 8, size="tiny", cross_drop=0.2)
    assert seven.cross_head.blocks[0].attn.proj_drop.p == 0.0
    assert eight.cross_head.blocks[0].attn.proj_drop.p == 0.2
    assert eight.cross_head.blocks[0].mlp.drop.p == seven.cross_head.blocks[0].mlp.drop.p == 0.2


# ---------------------------------------------------------------- weight loading

def test_authors_checkpoint_with_main_pickles_loads(tmp_path, monkeypatch):
    source = tiny("qcs").eval()
    path = tmp_path / "authors.pth"
    write_authors_checkpoint(path, as_authors(source), monkeypatch)
    with pytest.raises(AttributeError, match="RecorderMeter_loss"):
        torch.load(path, weights_only=False)  # plain torch.load cannot unpickle the recorders
    target = build_model("qcs", 7, size="tiny").eval()
    report = load_weights(target, read_checkpoint(path))
    assert report.source_format == "authors" and not report.missing
    assert sorted(report.ignored) == sorted(["base.backbone.output_layer.3.weight",
                                             "base.vit.eca_block.conv.weight", "cross_head.blocks.0.conv.weight"])
    assert report.checkpoint["epoch"] == 7
    group = images(4)
    for a, b in zip(source(*group), target(*group)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_our_checkpoint_and_bare_state_dict_load(tmp_path):
    source = tiny("dcs").eval()
    torch.save({"model": source.state_dict(), "config": source.config, "epoch": 1}, tmp_path / "ours.pth")
    for src, fmt in ((read_checkpoint(tmp_path / "ours.pth"), "ours"), (source.state_dict(), "state_dict")):
        target = tiny("dcs")
        torch.nn.init.zeros_(target.base.vit.head.classifier.weight)
        report = load_weights(target.eval(), src)
        assert report.source_format == fmt
        torch.testing.assert_close(target(images(1)[0]), source(images(1)[0]), rtol=0, atol=0)


def test_cross_checkpoint_into_base_branch_ignores_cross_module():
    source = tiny("qcs").eval()
    base = build_model("base", 7, size="tiny").eval()
    report = load_weights(base, as_authors(source))
    assert any(k.startswith("cross_blocks.") for k in report.ignored)
    torch.testing.assert_close(base(images(1)[0]), source(images(1)[0]), rtol=0, atol=0)


def ir50_state_dict(backbone, naming):
    """Face-recognition IR50 weights: our 3 stages plus a 4th stage and output layer."""
    sd = {}
    offsets = {"body1": 0, "body2": 3, "body3": 7}
    for key, value in backbone.state_dict().items():
        stage, _, rest = key.partition(".")
        if naming == "evolve" and stage in offsets:
            unit, _, rest = rest.partition(".")
            key = f"body.{offsets[stage] + int(unit)}.{rest}"
        sd["module." + key] = value.clone()
    stage4 = "body.21" if naming == "evolve" else "body4.0"
    sd[f"module.{stage4}.res_layer.1.weight"] = torch.zeros(512, 256, 3, 3)
    sd["module.output_layer.3.weight"] = torch.zeros(512, 25088)
    return sd


@pytest.mark.parametrize("naming", ["evolve", "staged"])
def test_ir50_weights_in_both_namings_fill_the_backbone(naming):
    torch.manual_seed(3)
    donor = build_model("base", 7).backbone
    model = build_model("qcs", 7)
    report = load_weights(model, ir50_state_dict(donor, naming))
    assert report.source_format == "ir50"
    assert len(report.loaded) == len(donor.state_dict())
    for key, value in donor.state_dict().items():
        torch.testing.assert_close(model.base.backbone.state_dict()[key], value, rtol=0, atol=0)


def test_class_count_mismatch_names_both():
    source = tiny("qcs", 7)
    with pytest.raises(CheckpointError, match=r"QCS model with 7 classes; the model is QCS with 8"):
        load_weights(tiny("qcs", 8), as_authors(source))


def test_qcs_checkpoint_into_dcs_names_both():
    with pytest.raises(CheckpointError, match=r"QCS model with 7 classes; the model is DCS with 7"):
        load_weights(tiny("dcs", 7), as_authors(tiny("qcs", 7)))


def test_strict_lists_missing_and_unexpected_keys():
    sd = as_authors(tiny("qcs"))
    del sd["module.VIT_base.norm.weight"]
    sd["module.VIT_base.mystery.weight"] = torch.zeros(2)
    with pytest.raises(CheckpointError) as error:
        load_weights(tiny("qcs"), sd)
    assert "base.vit.norm.weight" in str(error.value) and "mystery" in str(error.value)


def test_shape_mismatch_and_unreadable_files(tmp_path):
    with pytest.raises(CheckpointError, match="shapes differ"):
        load_weights(build_model("qcs", 7, size="small"), as_authors(tiny("qcs")))
    with pytest.raises(CheckpointError, match="nope.pth"):
        read_checkpoint(tmp_path / "nope.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pth"):
        read_checkpoint(tmp_path / "junk.pth")


def test_foreign_pickles_are_not_executed(tmp_path):
    """A checkpoint that would run code on unpickling loads inertly instead."""
    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": as_authors(tiny("dcs")), "recorder": Payload()}, path)
    checkpoint = read_checkpoint(path)
    assert "builtins.print" in repr(checkpoint["recorder"]) or "print" in repr(checkpoint["recorder"])


def test_d_only_has_no_k():
    # q1..q4 as in the hand-worked example above; with k = 2 the D-only weights must not change
    q1, q2 = torch.tensor([[[0.0, 0.0], [3.0, 4.0]]]), torch.tensor([[[0.0, 0.0], [0.0, 0.0]]])
    q3, q4 = torch.tensor([[[0.0, 0.0], [0.0, 3.0]]]), torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    d13_for_1 = [3 / math.sqrt(19), 1 + math.sqrt(10) / math.sqrt(19)]
    d_only = csa.csa_weights([q1, q2, q3, q4], k=2.0, matrix="d")[0][0]
    torch.testing.assert_close(d_only, torch.softmax(torch.tensor(d13_for_1), 0), rtol=0, atol=1e-6)


@pytest.mark.parametrize("matrix", ["s", "d"])
def test_s_only_and_d_only_have_no_theta_and_every_parameter_learns(matrix):
    model = tiny("qcs", matrix=matrix).train()
    assert not any(name.endswith("theta") for name, _ in model.named_parameters())
    loss, _ = group_loss(model(*images(4, batch=3)), torch.tensor([0, 1, 2]), torch.tensor([3, 4, 5]))
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_sdpa_cross_attention_by_hand():
    # C = 2, scale 1/√2. Anchor queries (1,0), (0,1); positive queries (1,0), (0,0).
    q_a, q_p = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]]), torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    v_a, v_p = torch.tensor([[[5.0, 6.0], [7.0, 8.0]]]), torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    high = math.exp(1 / math.sqrt(2)) / (math.exp(1 / math.sqrt(2)) + 1)  # softmax of (1/√2, 0)
    low = 1 - high
    # anchor position 0 scores the positive's positions (1/√2, 0); position 1 scores (0, 0)
    anchor = [[high * 1 + low * 3, high * 2 + low * 4], [2.0, 3.0]]
    # positive position 0 scores the anchor's positions (1/√2, 0); position 1 (zero query) (0, 0)
    positive = [[high * 5 + low * 7, high * 6 + low * 8], [6.0, 7.0]]
    u_a, u_p = csa.sdpa_updates([q_a, q_p], [v_a, v_p], k=None)
    torch.testing.assert_close(u_a[0], torch.tensor(anchor), rtol=0, atol=1e-6)
    torch.testing.assert_close(u_p[0], torch.tensor(positive), rtol=0, atol=1e-6)


def test_qcs_sdpa_extension_adds_k_times_the_other_class_partner():
    g = torch.Generator().manual_seed(0)
    q = [torch.randn(2, 3, 4, generator=g, dtype=torch.float64) for _ in range(4)]
    v = [torch.randn(2, 3, 4, generator=g, dtype=torch.float64) for _ in range(4)]

    def attend(x, y):
        return torch.softmax(q[x] @ q[y].transpose(1, 2) / 2.0, dim=-1) @ v[y]

    updates = csa.sdpa_updates(q, v, k=0.7)
    partners = {0: (1, 2), 1: (0, 3), 2: (3, 0), 3: (2, 1)}  # (same class, other class)
    for x, (same, other) in partners.items():
        torch.testing.assert_close(updates[x], attend(x, same) + 0.7 * attend(x, other))


def test_weight_maps_only_for_csa_and_the_released_block_forms():
    with pytest.raises(ValueError, match="only for CSA"):
        tiny("dcs", attention="sdpa").csa_maps(*images(2))
    assert build_model("dcs", 8, size="tiny").config["cross_block"] == "prenorm"
    assert build_model("dcs", 7, size="tiny").config["cross_block"] == "inplace"
    assert build_model("qcs", 8, size="tiny").config["cross_block"] == "inplace"
    assert tiny("dcs", 8).cross_blocks[0].form == "prenorm"
