"""Emptiness: the hidden-layer empty head learns, the 1x1 head and the smaller pads build, the product
rule and the wider threshold grids, and cv.json's false-empty breakdown (recounted from oof.npz)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from salt_model import run_folder
from salt_model.config import ModelConfig, load_config
from salt_model.evaluation.metric import competition_metric
from salt_model.evaluation.thresholds import EMPTY_GRID, Thresholds, at_edge, binarize, choose_thresholds
from salt_model.model import build_model
from salt_model.training.losses import bce_loss
from tests.conftest import collected_run

CPU = torch.device("cpu")
SMALL = {"encoder": "resnet18", "width": 0.125}


def test_the_hidden_layer_head_is_gap_linear_elu_linear():
    model = build_model(ModelConfig(**SMALL, empty_hidden=16))
    layers = [type(m).__name__ for m in model.empty_head]
    assert layers == ["AdaptiveAvgPool2d", "Flatten", "Dropout", "Linear", "ELU", "Linear"]
    assert model.empty_head[3].out_features == 16 and model.empty_head[5].in_features == 16
    old = build_model(ModelConfig(**SMALL))  # empty_hidden 0: the one Linear, old checkpoints load
    assert [type(m).__name__ for m in old.empty_head][-1] == "Linear" and len(old.empty_head) == 4


def test_the_hidden_layer_head_learns_emptiness_from_the_image():
    """Empty tiles are dark, salt tiles bright: the head's BCE must fall on 16 tiles in 40 steps."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(**SMALL, empty_hidden=16, scse=False, hypercolumn=False))
    target = torch.tensor([1.0, 0.0] * 8)  # 1 = empty
    x = (0.25 + 0.5 * (1 - target)).view(-1, 1, 1, 1) + 0.05 * torch.randn(16, 1, 64, 64)
    optimizer = torch.optim.Adam(model.empty_head.parameters(), lr=3e-3)

    def loss() -> torch.Tensor:
        return bce_loss(model(x.clamp(0, 1))[1], target)

    model.train()
    before = float(loss())
    for _ in range(40):
        optimizer.zero_grad()
        value = loss()
        value.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        after, logits = float(loss()), model(x.clamp(0, 1))[1]
    assert after < 0.5 * before, (before, after)
    assert ((logits > 0).float() == target).all()


def test_a_1x1_head_conv_and_the_112_and_104_pads_build_and_keep_the_input_size():
    base = build_model(ModelConfig(**SMALL))
    cheap = build_model(ModelConfig(**SMALL, head_kernel=1))
    assert base.head[0].kernel_size == (3, 3) and cheap.head[0].kernel_size == (1, 1)
    assert sum(p.numel() for p in cheap.head.parameters()) < sum(p.numel() for p in base.head.parameters())
    cheap.eval()
    for pad in (104, 112):
        load_config(None, [f"data.pad={pad}"])  # a valid config
        masks, empty = cheap(torch.rand(2, 1, pad, pad))
        assert masks.shape == (2, 1, pad, pad) and empty.shape == (2,)
    with pytest.raises(ValueError, match=r"model.head_kernel=5.*\[1, 3\]"):
        load_config(None, ["model.head_kernel=5"])


def test_the_product_rule_lets_a_sure_pixel_map_outvote_an_unsure_head():
    probs = np.zeros((3, 8, 8), dtype=np.float32)
    probs[:, :4] = 0.95  # half of each tile sure salt
    empty = np.array([0.2, 0.45, 0.9], dtype=np.float32)
    gate = binarize(probs, empty, Thresholds(empty=0.4)).any(axis=(1, 2))
    product = binarize(probs, empty, Thresholds(pixel=0.5, rule="product")).any(axis=(1, 2))
    assert gate.tolist() == [True, False, False]  # the head vetoes tile 1 at 0.45
    assert product.tolist() == [True, True, False]  # 0.95 x 0.55 > 0.5 keeps it; 0.95 x 0.1 does not
    with pytest.raises(ValueError, match="rule='fused'"):
        Thresholds(rule="fused")


def test_the_empty_grid_reaches_below_0_4_so_the_chosen_value_is_inside_it():
    """Salt tiles whose head says 0.35, empty tiles 0.25 (with false pixels): only a threshold in
    (0.25, 0.35) scores 1, below the old grid's end (0.4)."""
    truth = np.zeros((10, 20, 20), dtype=bool)
    truth[:5, 5:15, 5:15] = True
    probs = np.where(truth, 0.9, 0.0).astype(np.float32)
    probs[5:, 0:12, 0:12] = 0.9  # false salt on the empty tiles, larger than the true squares
    empty = np.array([0.35] * 5 + [0.45] * 5, dtype=np.float32)
    th, score = choose_thresholds(probs, empty, truth)
    assert score == pytest.approx(1.0) and 0.35 <= th.empty < 0.45
    assert th.empty in EMPTY_GRID and min(EMPTY_GRID) < 0.4
    assert at_edge(th) == [] and at_edge(Thresholds(pixel=0.05)) == ["pixel"]
    # the product rule is searched too, and never below its own defaults
    th_p, score_p = choose_thresholds(probs, empty, truth, rule="product")
    assert th_p.rule == "product" and score_p >= competition_metric(
        truth, binarize(probs, empty, Thresholds(rule="product"))
    )


@pytest.fixture(scope="module")
def collected(fold_checkpoints, tmp_path_factory):
    """3 folds (no Ray, empty head with a hidden layer), collected into cv.json and oof.npz as
    orchestrator.train does."""
    out, data, _, _ = collected_run(fold_checkpoints, tmp_path_factory)
    return out, data


def recount(truth: np.ndarray, pred: np.ndarray) -> list[dict]:
    """Per coverage class (round(coverage * 10), class 0 split into empty and < 5%): tiles, and salt
    tiles predicted empty (the empty class: empty tiles given salt), counted here from scratch."""
    coverage = truth.reshape(len(truth), -1).mean(axis=1)
    classes = np.round(coverage * 10).astype(int)
    truly_empty = coverage == 0
    predicted_empty = pred.reshape(len(pred), -1).sum(axis=1) == 0
    rows = []
    for label, sel, wrong in [
        ("empty", truly_empty, ~predicted_empty),
        ("0 (<5%)", (classes == 0) & ~truly_empty, predicted_empty),
        *[
            (f"{c} ({c * 10 - 5}-{min(100, c * 10 + 5)}%)", classes == c, predicted_empty)
            for c in range(1, 11)
        ],
    ]:
        if sel.sum():
            rows.append({"class": label, "tiles": int(sel.sum()), "wrong": int((sel & wrong).sum())})
    return rows


def test_cv_json_false_empty_breakdown_equals_a_recount_from_oof_npz(collected):
    out, data = collected
    cv = json.loads((out / "cv.json").read_text())
    oof = np.load(out / run_folder.OOF)
    assert oof["ids"].tolist() == data.ids.tolist()
    truth = data.masks.astype(bool)
    pred = binarize(oof["probs"], oof["empty"], Thresholds(**cv["thresholds"]))
    e = cv["emptiness"]
    expected = recount(truth, pred)
    assert [{k: r[k] for k in ("class", "tiles", "wrong")} for r in e["by_coverage"]] == expected
    for r in e["by_coverage"]:
        assert r["rate"] == pytest.approx(r["wrong"] / r["tiles"])
    salt = ~truth.any(axis=(1, 2))
    assert e["salt_tiles"] == int((~salt).sum()) and e["empty_tiles"] == int(salt.sum())
    assert e["salt_pred_empty"] == sum(r["wrong"] for r in expected if r["class"] != "empty")
    assert e["empty_pred_salt"] == next(r["wrong"] for r in expected if r["class"] == "empty")
    assert e["false_empty_rate"] == pytest.approx(e["salt_pred_empty"] / e["salt_tiles"])
    chosen = cv["variants"][cv["submission_variant"]]
    assert chosen["emptiness"] == e  # the same figures in the variant's own entry
    assert set(chosen["oof_score_by_empty_rule"]) == {"gate", "product"}
    assert chosen["oof_score_by_empty_rule"]["gate"]["oof_score"] == cv["oof_score"]


def test_the_report_shows_the_false_empty_table(collected):
    from orchestrator.run_report import build, save_oof_truth

    out, data = collected
    (out / "config.json").write_text(json.dumps(json.loads((out / "cv.json").read_text())["config"]))
    save_oof_truth(out, data.ids, data.images, data.masks.astype(bool))
    page = build(out).read_text()
    e = json.loads((out / "cv.json").read_text())["emptiness"]
    assert "Emptiness called wrong, by coverage class" in page
    assert f"{e['salt_pred_empty']} of {e['salt_tiles']} salt tiles predicted empty" in page
