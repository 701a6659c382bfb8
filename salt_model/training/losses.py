"""Segmentation losses: BCE, the Lovasz hinge (elu + 1 variant) and the TGS two-stage loss with an empty head.

Lovasz hinge: Berman, Rannen Triki & Blaschko, "The Lovasz-Softmax loss: A tractable surrogate for the
optimization of the intersection-over-union measure in neural networks", CVPR 2018; this reimplements
the algorithm of the authors' ``lovasz_losses.py`` (sort the hinge errors, weight them by the gradient
of the Lovasz extension of the Jaccard loss at the sorted labels), vectorised over the batch. The
``elu(errors) + 1`` variant replaces the hinge's ReLU; it was shared on the TGS forum and used by most
top solutions. Training follows their two stages: BCE first, then Lovasz from ``loss_switch_epoch`` on.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from salt_model.config import TrainConfig
from salt_model.data.augment import SIZE as TILE
from salt_model.data.augment import pad_amounts


def lovasz_hinge(
    logits: torch.Tensor, labels: torch.Tensor, per_image: bool = True, elu: bool = True
) -> torch.Tensor:
    """Binary Lovasz hinge of logits (B, [1,] H, W) against {0, 1} labels of the same shape -> scalar.

    per_image: the loss of each image, averaged over the batch (what TGS solutions used); otherwise one
    loss over all pixels of the batch. An empty mask gives the hinge of its largest error, as in the
    reference (the Jaccard weights are then 1 for the first sorted error and 0 for the rest).
    """
    if logits.shape != labels.shape:
        raise ValueError(
            f"lovasz_hinge: logits {tuple(logits.shape)} and labels {tuple(labels.shape)} differ"
        )
    if logits.ndim < 2:
        raise ValueError(f"lovasz_hinge: expected a batch (B, ...), got shape {tuple(logits.shape)}")
    rows = logits.shape[0] if per_image else 1
    return lovasz_hinge_rows(logits.reshape(rows, -1), labels.reshape(rows, -1), elu).mean()


def lovasz_hinge_rows(logits: torch.Tensor, labels: torch.Tensor, elu: bool = True) -> torch.Tensor:
    """Lovasz hinge of each row: logits, labels (R, N) -> (R,); one sort for all rows."""
    logits, labels = logits.float(), labels.float()
    signs = 2.0 * labels - 1.0
    errors = 1.0 - logits * signs  # (R, N) hinge errors
    errors_sorted, perm = torch.sort(errors, dim=1, descending=True)  # (R, N)
    labels_sorted = torch.gather(labels, 1, perm)  # (R, N)
    grad = _lovasz_grad(labels_sorted)  # (R, N), no gradient flows through the sort
    hinge = F.elu(errors_sorted) + 1.0 if elu else F.relu(errors_sorted)
    return (hinge * grad).sum(dim=1)  # (R,)


def _lovasz_grad(labels_sorted: torch.Tensor) -> torch.Tensor:
    """Gradient of the Lovasz extension of the Jaccard loss w.r.t. sorted errors (Berman et al., Alg. 1)."""
    gts = labels_sorted.sum(dim=1, keepdim=True)  # (R, 1)
    intersection = gts - labels_sorted.cumsum(dim=1)  # (R, N)
    union = gts + (1.0 - labels_sorted).cumsum(dim=1)  # (R, N), >= 1 everywhere
    jaccard = 1.0 - intersection / union  # (R, N)
    return torch.cat([jaccard[:, :1], jaccard[:, 1:] - jaccard[:, :-1]], dim=1)


def bce_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy on logits (computed in float32, safe under autocast)."""
    return F.binary_cross_entropy_with_logits(logits.float(), targets.float())


def loss_name(epoch: int, cfg: TrainConfig) -> str:
    """'bce' before cfg.loss_switch_epoch (0-based epochs), 'lovasz' from that epoch on."""
    return "bce" if epoch < cfg.loss_switch_epoch else "lovasz"


def compute_loss(
    outputs, masks: torch.Tensor, epoch: int, cfg: TrainConfig, weights: torch.Tensor | None = None
) -> tuple[torch.Tensor, dict[str, float]]:
    """Total training loss of the model's outputs and its parts (floats, for logging).

    outputs: (mask_logits (B, 1, H, W), empty_logits (B,) or None[, aux logits list each (B, 1, H, W)]).
    masks: (B, 1, H, W) float {0, 1}, reflect-padded like the images. Every term is computed on the
    central 101x101 tile only (the 9th-place TGS solution's --loss-on-center): the padded border
    mirrors salt from inside the tile (~38% of a 128x128 map) and is never scored. Maps of at most
    101x101 (unpadded tiles, small test inputs) are used whole.

    - seg: BCE before cfg.loss_switch_epoch, Lovasz hinge (elu + 1, per image) from it on. With an empty
      head it counts only non-empty images (the head decides emptiness); 0 when there are none.
    - empty: BCE of the empty head on every image (target 1 = mask empty), weight cfg.empty_loss_weight.
    - aux: BCE of each deep-supervision output on non-empty images, weight cfg.deep_supervision_weight each.

    weights: (B,) per-image weights (pseudo-labelled tiles weigh pseudo.weight, labelled ones 1); each
    term is then the weighted sum of its images' losses over their count. None: every image weighs 1,
    and the terms are the plain means above.
    """
    if not isinstance(outputs, (tuple, list)) or len(outputs) not in (2, 3):
        raise ValueError("compute_loss: outputs must be the model's (mask_logits, empty_logits[, aux]) tuple")
    mask_logits, empty_logits = outputs[0], outputs[1]
    aux = outputs[2] if len(outputs) == 3 else []
    if mask_logits.shape != masks.shape:
        raise ValueError(
            f"compute_loss: mask logits {tuple(mask_logits.shape)} vs masks {tuple(masks.shape)}"
        )
    mask_logits, masks = _centre(mask_logits), _centre(masks.float())
    aux = [_centre(a) for a in aux]
    nonempty = masks.flatten(1).amax(dim=1) > 0.5  # (B,)
    seg_rows = nonempty if empty_logits is not None else torch.ones_like(nonempty)

    seg = _masked_seg_loss(mask_logits, masks, seg_rows, loss_name(epoch, cfg), weights)
    total, parts = seg, {"seg": seg.item()}
    if empty_logits is not None:
        target = (~nonempty).float()
        if weights is None:
            empty = bce_loss(empty_logits, target)  # every image
        else:
            per_image = F.binary_cross_entropy_with_logits(empty_logits.float(), target, reduction="none")
            empty = (per_image * weights).mean()
        total = total + cfg.empty_loss_weight * empty
        parts["empty"] = empty.item()
    if aux:
        aux_loss = sum(_masked_seg_loss(a, masks, nonempty, "bce", weights) for a in aux)
        total = total + cfg.deep_supervision_weight * aux_loss
        parts["aux"] = aux_loss.item()
    parts["total"] = total.item()
    return total, parts


def _centre(x: torch.Tensor, size: int = TILE) -> torch.Tensor:
    """The central size x size of a padded (..., H, W) map (a view), offsets as augment.pad_amounts."""
    h, w = x.shape[-2:]
    if h <= size and w <= size:
        return x
    top, _, _, _ = pad_amounts(size, h) if h > size else (0, 0, 0, 0)
    _, _, left, _ = pad_amounts(size, w) if w > size else (0, 0, 0, 0)
    return x[..., top : top + min(h, size), left : left + min(w, size)]


def _masked_seg_loss(
    logits: torch.Tensor,
    masks: torch.Tensor,
    rows: torch.Tensor,
    name: str,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Segmentation loss over the images selected by rows (B,) bool; a zero that keeps the graph if none.
    With `weights` (B,): each selected image's loss times its weight, summed over the selected count."""
    if not bool(rows.any()):
        return logits.float().sum() * 0.0
    logits, masks = logits[rows], masks[rows]
    if weights is None:
        return (
            bce_loss(logits, masks)
            if name == "bce"
            else lovasz_hinge(logits, masks, per_image=True, elu=True)
        )
    if name == "bce":
        per_image = F.binary_cross_entropy_with_logits(logits.float(), masks.float(), reduction="none")
        per_image = per_image.flatten(1).mean(dim=1)
    else:
        per_image = lovasz_hinge_rows(logits.flatten(1), masks.flatten(1), elu=True)
    return (per_image * weights[rows]).mean()
