"""Supermask engine: one frozen random network, one binary mask per task (pure torch, no finance).

Public API::

    net = FrozenNet(sizes=(64, 512, 512, 3), seed=0)
    bank = train_masks(net, {"a": (X, y), "b": (X2, y2)}, method="edge_popup", density=0.5)
    logits = net(X, mask=bank["a"])
    logits = net(X, masks=bank, alphas={"a": 0.3, "b": 0.7})
    bank.save("bank_dir"); bank = MaskBank.load("bank_dir", net)
"""

from __future__ import annotations

from supsup_fin.masks.analysis import jaccard_matrix, layer_densities
from supsup_fin.masks.bank import FORMAT_VERSION, MaskBank
from supsup_fin.masks.forms import MASK_FORMS, EdgePopup, MaskForm, Threshold, get_form
from supsup_fin.masks.mask import Mask
from supsup_fin.masks.net import FrozenNet
from supsup_fin.masks.train import train_masks

__all__ = [
    "FORMAT_VERSION",
    "MASK_FORMS",
    "EdgePopup",
    "FrozenNet",
    "Mask",
    "MaskBank",
    "MaskForm",
    "Threshold",
    "get_form",
    "jaccard_matrix",
    "layer_densities",
    "train_masks",
]
