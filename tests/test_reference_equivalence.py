"""The project's DCS / QCS models against an independent functional reference.

The reference (tests/functional_reference.py) is first checked against the logits the authors'
own DCS model produced for the stand-in weights (tests/fixtures); the project's models are then
compared with it in float64 for every released variant: QCS and DCS with 7 and 8 classes (the
8-class DCS with its pre-norm cross block), the base branch alone, the S-only / D-only and SDPA
ablations, and the checkpoint key layouts the releases use.
"""
import json

import pytest
import torch

from functional_reference import reference_forward
from models import ARCHS, build_model, load_weights
from stand_in_weights import FIXTURES, authors_state_dict, branch_inputs

ATOL = 1e-9
BATCH = 2


@pytest.fixture(scope="module")
def images():
    return [t[:BATCH] for t in branch_inputs()]


def project_model(arch, num_classes, state_dict, **options):
    model = build_model(arch, num_classes, **options)
    report = load_weights(model, {"state_dict": state_dict, "epoch": 1})
    return model.double().eval(), report


def max_differences(outputs, expected):
    assert len(outputs) == len(expected)
    assert all(out.shape == ref.shape for out, ref in zip(outputs, expected))
    return [(out - ref).abs().max().item() for out, ref in zip(outputs, expected)]


def compare(arch, num_classes, images, state_dict=None, reference_options=None, **options):
    """Max |difference| between our model and the reference, and the load report."""
    state_dict = state_dict or authors_state_dict(arch.upper(), num_classes)
    group = images[:ARCHS[arch]]
    with torch.no_grad():
        expected = reference_forward(state_dict, group, num_classes, **(reference_options or {}))
        model, report = project_model(arch, num_classes, state_dict, **options)
        outputs = model(*group)
    return max(max_differences(outputs, expected)), report


@pytest.mark.slow  # over a few seconds on 2 CPU cores
def test_reference_matches_authors_dcs_logits():
    fixture = json.loads((FIXTURES / "reference_DCS_7cls_raf_db.json").read_text())
    with torch.no_grad():
        outputs = reference_forward(authors_state_dict("DCS", 7), branch_inputs()[:2], 7)
    expected = [torch.tensor(o, dtype=torch.float64) for o in fixture["outputs"]]
    assert max(max_differences(outputs, expected)) < ATOL


SLOW = pytest.mark.slow  # a paper-size float64 forward pass: seconds each on 2 cores


@pytest.mark.parametrize("arch, num_classes, block_form", [
    pytest.param("qcs", 7, "inplace", marks=SLOW), pytest.param("qcs", 8, "inplace", marks=SLOW),
    pytest.param("dcs", 7, "inplace", marks=SLOW), pytest.param("dcs", 8, "prenorm", marks=SLOW)])
def test_released_variants_match_the_reference(arch, num_classes, block_form, images):
    difference, report = compare(arch, num_classes, images, reference_options=dict(block_form=block_form))
    assert difference < ATOL and report.source_format == "authors"


@SLOW
def test_the_two_block_forms_differ(images):
    # so the check above can tell the 8-class DCS form from the other one
    state_dict = authors_state_dict("DCS", 8)
    with torch.no_grad():
        prenorm = reference_forward(state_dict, images[:2], 8, block_form="prenorm")
        inplace = reference_forward(state_dict, images[:2], 8, block_form="inplace")
    assert max(max_differences(prenorm[2:], inplace[2:])) > 1e-3


@pytest.mark.slow  # over a few seconds on 2 CPU cores
def test_base_branch_alone_matches_reference():
    state_dict = authors_state_dict("QCS", 7)
    inputs = branch_inputs()
    image = torch.stack([inputs[2][0], inputs[3][1]])  # a batch unlike the ones above
    with torch.no_grad():
        (expected,) = reference_forward(state_dict, [image], 7)
        model, _ = project_model("base", 7, state_dict)
        output = model(image)
    assert (output - expected).abs().max().item() < ATOL


@SLOW
@pytest.mark.parametrize("matrix", ["s", "d"])
def test_s_only_and_d_only_have_no_k(matrix, images):
    difference, report = compare("qcs", 7, images, matrix=matrix, reference_options=dict(matrix=matrix))
    assert difference < ATOL
    assert sorted(k for k in report.ignored if k.endswith("theta")) == [
        f"cross_blocks.{i}.theta" for i in range(3)]


@SLOW
def test_sdpa_ablation_is_plain_cross_attention(images):
    difference, _ = compare("dcs", 7, images, attention="sdpa", reference_options=dict(attention="sdpa"))
    assert difference < ATOL


def loaded_state(arch, num_classes, state_dict):
    model = build_model(arch, num_classes, size="paper")
    report = load_weights(model, {"state_dict": state_dict})
    return model.state_dict(), report


def test_embed_1_2_3_names_load_the_same_weights():
    state_dict = authors_state_dict("DCS", 7)
    renamed = dict(state_dict)
    for old, new in (("embed_q.", "embed_1."), ("embed_k.", "embed_2."), ("embed_v.", "embed_3.")):
        renamed = {k.replace("module." + old, "module." + new, 1): v for k, v in renamed.items()}
    assert any(k.startswith("module.embed_3.proj.") for k in renamed)
    expected, _ = loaded_state("dcs", 7, state_dict)
    got, _ = loaded_state("dcs", 7, renamed)
    assert all(torch.equal(got[k], expected[k]) for k in expected)


@SLOW
def test_dcs_affectnet_8_fusion_classifier_loads_strictly_and_is_ignored():
    state_dict = authors_state_dict("DCS", 8)
    with_fusion = dict(state_dict)
    with_fusion["module.fusion.classifier.weight"] = torch.zeros(8, 768 * 768)
    with_fusion["module.fusion.classifier.bias"] = torch.zeros(8)
    expected, _ = loaded_state("dcs", 8, state_dict)
    got, report = loaded_state("dcs", 8, with_fusion)  # strict by default
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    assert {"fusion.classifier.weight", "fusion.classifier.bias"} <= set(report.ignored)
