"""Loss tests: Lovasz hinge against hand-computed values and a per-image loop, the BCE -> Lovasz switch,
empty images, the empty head and deep supervision."""

import pytest
import torch
import torch.nn.functional as F

from salt_model.config import TrainConfig
from salt_model.training.losses import bce_loss, compute_loss, loss_name, lovasz_hinge

CFG = TrainConfig(loss_switch_epoch=3, empty_loss_weight=0.1, deep_supervision_weight=0.1)


def reference_lovasz(logits, labels, elu):
    """Berman et al.'s algorithm, one image at a time, written the slow obvious way."""
    losses = []
    for lg, lb in zip(logits.reshape(len(logits), -1), labels.reshape(len(labels), -1), strict=True):
        errors = 1.0 - lg * (2.0 * lb - 1.0)
        order = sorted(range(len(errors)), key=lambda i: -errors[i].item())
        gts, inter_hits, union_misses, prev_j, loss = lb.sum().item(), 0.0, 0.0, 0.0, 0.0
        for i in order:
            inter_hits += lb[i].item()
            union_misses += 1.0 - lb[i].item()
            j = 1.0 - (gts - inter_hits) / (gts + union_misses)
            e = errors[i].item()
            loss += (F.elu(torch.tensor(e)).item() + 1.0 if elu else max(e, 0.0)) * (j - prev_j)
            prev_j = j
        losses.append(loss)
    return sum(losses) / len(losses)


def test_lovasz_hand_computed():
    # errors = 1 - logit * sign = [0, 2, 1]; sorted [2 (fg), 1 (bg), 0 (fg)]; Jaccard [1/2, 2/3, 1]
    # -> weights [1/2, 1/6, 1/3]; hinge: 2/2 + 1/6 + 0 = 7/6; elu + 1: 3/2 + 2/6 + 1/3 = 13/6.
    logits = torch.tensor([[1.0, -1.0, 0.0]])
    labels = torch.tensor([[1.0, 1.0, 0.0]])
    assert lovasz_hinge(logits, labels, elu=False).item() == pytest.approx(7 / 6)
    assert lovasz_hinge(logits, labels, elu=True).item() == pytest.approx(13 / 6)


def test_lovasz_empty_mask_is_hinge_of_largest_error():
    logits, labels = torch.tensor([[0.5, -2.0]]), torch.zeros(1, 2)  # errors [1.5, -1]
    assert lovasz_hinge(logits, labels, elu=False).item() == pytest.approx(1.5)
    assert lovasz_hinge(logits, labels, elu=True).item() == pytest.approx(2.5)


@pytest.mark.parametrize("elu", [True, False])
def test_lovasz_matches_loop_reference(elu):
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(5, 1, 6, 7, generator=g) * 2
    labels = (torch.rand(5, 1, 6, 7, generator=g) > 0.6).float()
    labels[2] = 0.0  # one empty image
    labels[3] = 1.0  # one full image
    assert lovasz_hinge(logits, labels, per_image=True, elu=elu).item() == pytest.approx(
        reference_lovasz(logits, labels, elu), rel=1e-5
    )
    flat = reference_lovasz(logits.reshape(1, -1), labels.reshape(1, -1), elu)
    assert lovasz_hinge(logits, labels, per_image=False, elu=elu).item() == pytest.approx(flat, rel=1e-5)


def test_lovasz_perfect_prediction_small():
    labels = torch.tensor([[1.0, 0.0, 1.0, 0.0]])
    logits = (labels * 2 - 1) * 5  # errors all -4: hinge 0
    assert lovasz_hinge(logits, labels, elu=False).item() == pytest.approx(0.0)
    with pytest.raises(ValueError, match="differ"):
        lovasz_hinge(logits, labels[:, :3])


def test_bce_loss():
    assert bce_loss(torch.zeros(3), torch.ones(3)).item() == pytest.approx(0.6931472)


def _batch(seed=0, empty=(1,)):
    g = torch.Generator().manual_seed(seed)
    masks = (torch.rand(4, 1, 8, 8, generator=g) > 0.5).float()
    for i in empty:
        masks[i] = 0.0
    logits = torch.randn(4, 1, 8, 8, generator=g, requires_grad=True)
    empty_logits = torch.randn(4, generator=g, requires_grad=True)
    return logits, empty_logits, masks


def test_loss_switch_exactly_at_epoch():
    assert [loss_name(e, CFG) for e in (0, 2, 3, 4)] == ["bce", "bce", "lovasz", "lovasz"]
    logits, _, masks = _batch(empty=())
    seg = [compute_loss((logits, None), masks, e, CFG)[1]["seg"] for e in (2, 3)]
    assert seg[0] == pytest.approx(bce_loss(logits, masks).item())
    assert seg[1] == pytest.approx(lovasz_hinge(logits, masks).item())


@pytest.mark.parametrize("epoch", [0, 5])
def test_empty_images_excluded_from_seg_but_seen_by_empty_head(epoch):
    logits, empty_logits, masks = _batch()
    total, parts = compute_loss((logits, empty_logits), masks, epoch, CFG)
    changed = logits.detach().clone()
    changed[1] = 10.0  # image 1 has an empty mask
    _, parts2 = compute_loss((changed, empty_logits), masks, epoch, CFG)
    assert parts2["seg"] == pytest.approx(parts["seg"])
    keep = torch.tensor([0, 2, 3])
    seg_ref = (bce_loss if epoch < 3 else lovasz_hinge)(logits[keep], masks[keep]).item()
    assert parts["seg"] == pytest.approx(seg_ref)
    empty_ref = bce_loss(empty_logits, torch.tensor([0.0, 1.0, 0.0, 0.0])).item()
    assert parts["empty"] == pytest.approx(empty_ref)
    assert total.item() == pytest.approx(seg_ref + 0.1 * empty_ref)
    total.backward()
    assert logits.grad[1].abs().sum() == 0 and logits.grad[0].abs().sum() > 0
    assert (empty_logits.grad != 0).all()


def test_without_empty_head_all_images_count():
    logits, _, masks = _batch()
    _, parts = compute_loss((logits, None), masks, 5, CFG)
    assert parts["seg"] == pytest.approx(lovasz_hinge(logits, masks).item())
    assert "empty" not in parts


@pytest.mark.parametrize("epoch", [0, 5])
def test_all_empty_batch_keeps_graph(epoch):
    logits, empty_logits, masks = _batch(empty=(0, 1, 2, 3))
    aux = [torch.randn(4, 1, 8, 8, requires_grad=True)]
    total, parts = compute_loss((logits, empty_logits, aux), masks, epoch, CFG)
    assert parts["seg"] == 0.0 and parts["aux"] == 0.0
    total.backward()
    assert logits.grad is not None and logits.grad.abs().sum() == 0
    assert empty_logits.grad.abs().sum() > 0


def test_deep_supervision_terms():
    logits, empty_logits, masks = _batch()
    aux = [torch.randn(4, 1, 8, 8, requires_grad=True) for _ in range(2)]
    total, parts = compute_loss((logits, empty_logits, aux), masks, 5, CFG)
    keep = torch.tensor([0, 2, 3])
    aux_ref = sum(bce_loss(a[keep], masks[keep]).item() for a in aux)
    assert parts["aux"] == pytest.approx(aux_ref)
    assert parts["total"] == pytest.approx(parts["seg"] + 0.1 * parts["empty"] + 0.1 * aux_ref)
    total.backward()
    assert all(a.grad is not None and a.grad[1].abs().sum() == 0 for a in aux)


def test_bad_outputs_raise():
    with pytest.raises(ValueError, match="tuple"):
        compute_loss(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4), 0, CFG)
    with pytest.raises(ValueError, match="vs masks"):
        compute_loss((torch.zeros(1, 1, 4, 4), None), torch.zeros(1, 1, 5, 5), 0, CFG)


@pytest.mark.parametrize("epoch", [0, 5])
def test_loss_ignores_the_padded_border(epoch):
    """Tiles are 101x101 reflect-padded to 128 (13 px before, 14 after): only the centre is scored."""
    import numpy as np

    from salt_model.data.augment import pad_amounts

    gen = torch.Generator().manual_seed(0)
    centre = (torch.rand(3, 1, 101, 101, generator=gen) > 0.6).float()
    centre[1] = 0.0  # one empty tile
    masks = torch.from_numpy(np.pad(centre.numpy(), [(0, 0), (0, 0), (13, 14), (13, 14)], mode="reflect"))
    logits = torch.randn(3, 1, 128, 128, generator=gen, requires_grad=True)
    empty_logits = torch.randn(3, generator=gen)
    aux = [torch.randn(3, 1, 128, 128, generator=gen)]
    top, bottom, left, right = pad_amounts(101, 128)
    assert (top, bottom, left, right) == (13, 14, 13, 14)
    inside = torch.zeros(128, 128, dtype=torch.bool)
    inside[top : 128 - bottom, left : 128 - right] = True

    total, parts = compute_loss((logits, empty_logits, aux), masks, epoch, CFG)
    border = logits.detach().clone()
    border[..., ~inside] = torch.randn(int((~inside).sum()), generator=gen) * 10
    aux_border = aux[0].clone()
    aux_border[..., ~inside] = 50.0
    total2, parts2 = compute_loss((border, empty_logits, [aux_border]), masks, epoch, CFG)
    assert total2.item() == pytest.approx(total.item(), rel=1e-6)
    assert parts2 == pytest.approx(parts, rel=1e-6)

    # the same figure as the loss of the unpadded tiles
    crop = (slice(None), slice(None), slice(top, 128 - bottom), slice(left, 128 - right))
    ref, _ = compute_loss((logits[crop], empty_logits, [aux[0][crop]]), centre, epoch, CFG)
    assert total.item() == pytest.approx(ref.item(), rel=1e-6)
    total.backward()
    assert logits.grad[..., ~inside].abs().sum() == 0 and logits.grad[..., inside].abs().sum() > 0
