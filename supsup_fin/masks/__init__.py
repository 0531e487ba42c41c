"""Supermask engine: one frozen random network, one binary mask per task (pure torch, no finance).

Public API::

    net = FrozenNet(sizes=(64, 512, 512, 3), seed=0)
    bank = train_masks(net, {"a": (X, y), "b": (X2, y2)}, method="edge_popup", density=0.5)
    logits = net(X, mask=bank["a"])
    logits = net(X, masks=bank, alphas={"a": 0.3, "b": 0.7})
    found = infer_task(net, bank, X, method="one_shot")      # no task id: found.task, found.scores
    scores = row_task_scores(net, bank, ["a", "b"], X)     # [N, 2]: each row's first-round scores
    bank.save("bank_dir"); bank = MaskBank.load("bank_dir", net)

Forms (``method=``): ``edge_popup`` (exact top-k density, options ``erdos_renyi`` and ``init_scale``), ``threshold``,
``hard_concrete`` (options ``tau``, ``tau_final``, ``l0_lambda``, ``init_p``; with
``store_probabilities=True`` the bank keeps p as uint8 for ``predict_proba(..., "stochastic")``).
"""

from __future__ import annotations

from supsup_fin.masks.analysis import jaccard_chance, jaccard_matrix, layer_densities, plot_jaccard
from supsup_fin.masks.bank import FORMAT_VERSION, MaskBank
from supsup_fin.masks.forms import (
    MASK_FORMS,
    EdgePopup,
    HardConcrete,
    MaskForm,
    Threshold,
    erdos_renyi_densities,
    get_form,
)
from supsup_fin.masks.inference import (
    TaskInference,
    infer_task,
    predict_proba,
    row_task_scores,
    sample_masks,
)
from supsup_fin.masks.mask import Mask
from supsup_fin.masks.net import FrozenNet
from supsup_fin.masks.train import train_masks

__all__ = [
    "FORMAT_VERSION",
    "MASK_FORMS",
    "EdgePopup",
    "FrozenNet",
    "HardConcrete",
    "Mask",
    "MaskBank",
    "MaskForm",
    "TaskInference",
    "Threshold",
    "erdos_renyi_densities",
    "get_form",
    "infer_task",
    "jaccard_chance",
    "jaccard_matrix",
    "layer_densities",
    "plot_jaccard",
    "predict_proba",
    "row_task_scores",
    "sample_masks",
    "train_masks",
]
