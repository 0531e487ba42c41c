"""Novel regimes, SupSup's way: no mask of the market fits the recent rows, and the HMM agrees.

SupSup (Wortsman et al. 2020) allocates a new mask when none of the existing ones fits. With the
candidate masks superposed at ``α = 1/k``, the gradient of the output entropy ``H`` with respect
to ``α`` is flat (no mask lowers the entropy more than the others), or the best mask's entropy
stays high. Here the candidates are the market's distinct masks (its regime masks and its ALL
mask) and, per row,

- ``dH/dα_k`` is :func:`~supsup_fin.masks.row_task_scores` (``H``: the entropy of the softmax
  over every output of the net, superfluous units included);
- ``H_k`` is the entropy of that same softmax through mask ``k`` alone.

Over the last ``window`` rows up to t, the best mask is the one with the lowest mean score (the
``infer`` gate's choice); the statistics are its mean entropy (``entropy``) and the spread
``max_k - min_k`` of the mean scores (``flatness``; small is flat).

The rule says novel when either statistic leaves its training range: above its ``quantile``
quantile on the training rows or below its ``1 - quantile`` quantile. SupSup's own directions
(entropy high, scores flat) are one side of each; the other side is what an unseen market
regime mostly does to these nets. Its features lie many training standard deviations out, and a
bias-free ReLU net is positively homogeneous, so every mask's logits grow with them: the softmax
gets more confident (``H`` falls) and the masks' scores spread apart, instead of flattening
(``benchmarks/novelty_bench.py``: on synthetic markets switching to 3-5 times their largest
volatility or a quarter of their smallest, SupSup's one-sided rule fires on none, the two-sided
one on all). The HMM test (:mod:`supsup_fin.monitor.hmm`) says novel when the recent mean
predictive log-likelihood is below its training ``hmm_quantile`` quantile. A date is ``novel``
when both say so.

The training ranges live in ``MarketModel.reference["novelty"]`` (:func:`novelty_reference`)
and ``reference["hmm"]`` (:func:`~supsup_fin.monitor.hmm.loglik_reference`). Everything here is
causal: the value at t reads prices up to t only.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch

from supsup_fin import _rolling as rl
from supsup_fin.config import MonitorConfig, NoveltyConfig
from supsup_fin.errors import DataError
from supsup_fin.forecaster.gating import MarketModel, RegimeGatedForecaster
from supsup_fin.masks import row_task_scores
from supsup_fin.monitor.hmm import GRID, loglik_series, reference_quantile

__all__ = ["detect_novelty", "market_masks", "novelty_alert", "novelty_reference", "novelty_series"]

NO_REFERENCE = "retrain to enable the novel-regime check"
FIGURES = ("entropy", "entropy_threshold", "flatness", "flatness_threshold", "log_likelihood", "log_likelihood_threshold")
"""The statistics and thresholds a verdict reports."""


def market_masks(mm: MarketModel) -> list[str]:
    """The market's distinct masks, in order: those its regimes name, then its ALL mask."""
    return list(dict.fromkeys([*(mm.masks.get(r, mm.all_mask) for r in mm.regime.names_), mm.all_mask]))


def _row_statistics(fc: RegimeGatedForecaster, masks: list[str], X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row of ``X`` ``[n, in]``: the task-inference scores ``dH/dα`` and each mask's own
    entropy ``H``, both ``[n, k]`` float64 (NaN on rows whose input is not finite)."""
    scores = np.full((len(X), len(masks)), np.nan)
    entropy = np.full((len(X), len(masks)), np.nan)
    finite = np.isfinite(X).all(axis=1)
    if not finite.any():
        return scores, entropy
    x = torch.as_tensor(X[finite], dtype=torch.float32)
    scores[finite] = row_task_scores(fc.net, fc.bank, masks, x)
    with torch.no_grad():
        for k, name in enumerate(masks):
            logp = torch.log_softmax(fc.net(x, mask=fc.bank[name], all_outputs=True).double(), dim=1)
            entropy[finite, k] = (-(logp.exp() * logp).sum(dim=1)).cpu().numpy()
    return scores, entropy


def _rolling_statistics(scores: np.ndarray, entropy: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """The rule's statistics at each row ``[n]`` each: the best mask's mean entropy over the last
    ``window`` rows and the spread of the mean scores (NaN until ``window`` finite rows; the
    spread is NaN for a single mask)."""
    mean_scores = np.column_stack([rl.rolling_mean(s, window) for s in scores.T])
    mean_entropy = np.column_stack([rl.rolling_mean(h, window) for h in entropy.T])
    ok = np.isfinite(mean_scores).all(axis=1)
    filled = np.where(ok[:, None], mean_scores, 0.0)
    ent = np.where(ok, mean_entropy[np.arange(len(filled)), filled.argmin(axis=1)], np.nan)
    if scores.shape[1] < 2:
        return ent, np.full(len(ent), np.nan)
    return ent, np.where(ok, filled.max(axis=1) - filled.min(axis=1), np.nan)


def _quantiles(values: np.ndarray) -> list[float] | None:
    values = values[np.isfinite(values)]
    return np.quantile(values, GRID).round(8).tolist() if len(values) else None


def novelty_reference(fc: RegimeGatedForecaster, market: str, X_train: np.ndarray, cfg: NoveltyConfig) -> dict[str, Any]:
    """The training range of the rule's statistics, for ``MarketModel.reference["novelty"]``.

    Parameters
    ----------
    fc : the forecaster holding the market's masks.
    market : the market.
    X_train : ``[n, in]`` the market's network inputs on its training rows, consecutive, oldest
        first (``FeatureSet.X[FeatureSet.rows("train")]``).
    cfg : ``cfg.monitor.novelty``; its ``window`` is stored with the range.

    Returns
    -------
    ``{"window", "masks", "n_rows", "grid", "entropy", "flatness"}``: ``entropy[i]`` and
    ``flatness[i]`` are the ``grid[i]`` quantiles of the statistics' ``window``-row means over
    the training rows (``flatness`` is None for a market with a single mask).
    """
    masks = market_masks(fc.market_model(market))
    X = np.asarray(X_train, dtype=np.float32)
    ent, flat = _rolling_statistics(*_row_statistics(fc, masks, X), cfg.window)
    n = int(np.isfinite(ent).sum())
    if n < 2:
        raise DataError(f"market {market!r}: {n} training rows of {cfg.window}-row novelty statistics from "
                        f"{len(X)} input rows; need at least {cfg.window + 1} consecutive finite rows")
    return {"window": int(cfg.window), "masks": masks, "n_rows": int(len(X)), "grid": GRID.round(4).tolist(),
            "entropy": _quantiles(ent), "flatness": _quantiles(flat)}


def _range_check(ref: dict[str, Any], statistic: str, values: np.ndarray, q: float) -> tuple[np.ndarray, np.ndarray]:
    """Per value ``[n]``: the bound of its statistic's training range on the value's side of the
    training median (the ``q`` quantile above it, the ``1 - q`` quantile below), and whether the
    value lies beyond it. NaN bound and False for NaN values or a statistic without a range."""
    if ref.get(statistic) is None:
        return np.full(len(values), np.nan), np.zeros(len(values), dtype=bool)
    grid = {"grid": ref["grid"], "quantiles": ref[statistic]}
    low, mid, high = (reference_quantile(grid, p) for p in (1 - q, 0.5, q))
    with np.errstate(invalid="ignore"):
        upper = values >= mid
        bound = np.where(np.isnan(values), np.nan, np.where(upper, high, low))
        return bound, np.where(upper, values > high, values < low)


def _missing_reference(mm: MarketModel, reference: dict[str, Any]) -> str | None:
    """Why ``reference`` cannot back the check for ``mm``'s masks, or None."""
    if "novelty" not in reference or "hmm" not in reference:
        part = "novelty" if "novelty" not in reference else "HMM"
        return f"market {mm.name!r}: the model holds no {part} training reference; {NO_REFERENCE}"
    stored = list(reference["novelty"]["masks"])
    if stored != market_masks(mm):
        return (f"market {mm.name!r}: the novelty reference was computed for masks {stored}, the market now "
                f"routes to {market_masks(mm)}; {NO_REFERENCE}")
    return None


def novelty_series(fc: RegimeGatedForecaster, market: str, prices: pd.DataFrame, reference: dict[str, Any],
                   cfg: MonitorConfig) -> pd.DataFrame:
    """The novel-regime check on every date of ``prices`` (causal: row t reads prices up to t).

    Parameters
    ----------
    fc, market : the forecaster and the market whose masks are checked.
    prices : the market's prices, oldest first (the HMM filter runs from the first row).
    reference : the market's training reference (``MarketModel.reference``), holding ``"novelty"``
        (:func:`novelty_reference`) and ``"hmm"`` (:func:`~supsup_fin.monitor.hmm.loglik_reference`);
        each statistic is averaged over the window stored with its range.
    cfg : ``cfg.monitor``: ``novelty.quantile`` and ``hmm_quantile`` set the thresholds.

    Returns
    -------
    DataFrame indexed by date: ``entropy``, ``flatness``, ``log_likelihood`` (float, NaN until
    their windows fill) and their ``*_threshold``: for the rule's statistics, the bound of the
    training range on the value's side of the training median (the ``quantile`` quantile above
    it, the ``1 - quantile`` one below), for the log-likelihood the training ``hmm_quantile``
    quantile; ``entropy_novel`` and ``flatness_novel`` (the statistic beyond its bound),
    ``rule_novel`` (either), ``hmm_novel`` (the log-likelihood below its threshold) and
    ``novel`` (the rule and the HMM), bool.

    Raises
    ------
    DataError
        When ``reference`` lacks either range or was computed for other masks than the market's.
    """
    mm = fc.market_model(market)
    why = _missing_reference(mm, reference)
    if why:
        raise DataError(why)
    ref, q = reference["novelty"], cfg.novelty.quantile
    ent, flat = _rolling_statistics(*_row_statistics(fc, ref["masks"], fc.inputs(market, prices)), int(ref["window"]))
    ll = loglik_series(mm.regime, prices, int(reference["hmm"]["window"])).reindex(prices.index).to_numpy()
    (ent_bound, ent_out), (flat_bound, flat_out) = (_range_check(ref, k, v, q) for k, v in (("entropy", ent),
                                                                                           ("flatness", flat)))
    ll_bound = reference_quantile(reference["hmm"], cfg.hmm_quantile)
    out = pd.DataFrame({"entropy": ent, "entropy_threshold": ent_bound, "flatness": flat,
                        "flatness_threshold": flat_bound, "log_likelihood": ll, "log_likelihood_threshold": ll_bound},
                       index=prices.index)
    out["entropy_novel"], out["flatness_novel"] = ent_out, flat_out
    out["rule_novel"] = ent_out | flat_out
    with np.errstate(invalid="ignore"):
        out["hmm_novel"] = ll < ll_bound
    out["novel"] = out["rule_novel"] & out["hmm_novel"]
    return out


def _current_run(flags: pd.Series) -> pd.Timestamp | None:
    """The first date of the run of True values that ends at the last date, or None."""
    if not len(flags) or not flags.iloc[-1]:
        return None
    off = np.flatnonzero(~flags.to_numpy())
    return flags.index[off[-1] + 1] if len(off) else flags.index[0]


def detect_novelty(fc: RegimeGatedForecaster, market: str, prices: pd.DataFrame, cfg: MonitorConfig) -> dict[str, Any]:
    """The novel-regime verdict on the last date of ``prices``, for the monitoring pass.

    Returns
    -------
    ``{"market", "as_of", "novel", "rule_novel", "hmm_novel", "since", "statistic", "entropy",
    "entropy_threshold", "flatness", "flatness_threshold", "log_likelihood",
    "log_likelihood_threshold", "detail"}`` on the last date (:func:`novelty_series`'s columns):
    ``since`` is the first date of the current run of novel dates (None when the last date is
    not novel), ``statistic`` the rule's statistic beyond its bound (``"entropy"`` first, then
    ``"flatness"``; None), ``detail`` one sentence with the figures. A market whose model holds
    no novelty or HMM reference, or one computed for other masks, gets ``novel`` False, the
    figures None and a ``detail`` saying to retrain.
    """
    mm = fc.market_model(market)
    as_of = str(prices.index[-1].date()) if len(prices) else None
    why = _missing_reference(mm, mm.reference)
    if why:
        return {"market": market, "as_of": as_of, "novel": False, "rule_novel": False, "hmm_novel": False,
                "since": None, "statistic": None, **dict.fromkeys(FIGURES), "detail": why}
    series = novelty_series(fc, market, prices, mm.reference, cfg)
    last = series.iloc[-1]
    since = _current_run(series["novel"])
    fired = [k for k in ("entropy", "flatness") if last[f"{k}_novel"]]
    out = {"market": market, "as_of": as_of, "novel": bool(last["novel"]), "rule_novel": bool(last["rule_novel"]),
           "hmm_novel": bool(last["hmm_novel"]), "since": None if since is None else str(since.date()),
           "statistic": fired[0] if fired else None,
           **{k: None if pd.isna(last[k]) else round(float(last[k]), 6) for k in FIGURES}}
    return {**out, "detail": _detail(out, {k: bool(last[f"{k}_novel"]) for k in ("entropy", "flatness")}, cfg)}


def _detail(v: dict[str, Any], beyond: dict[str, bool], cfg: MonitorConfig) -> str:
    """One sentence on the verdict ``v`` and its figures (``beyond``: which rule statistic left its range)."""
    q = cfg.novelty.quantile

    def figure(label: str, key: str) -> str:
        value, bound = v[key], v[f"{key}_threshold"]
        if value is None or bound is None:
            return f"{label} n/a"
        if key == "log_likelihood":
            where = f"{'below' if value < bound else 'above'} its training {cfg.hmm_quantile:g} quantile"
        elif beyond[key]:
            where = f"{'above' if value > bound else 'below'} its training {q if value > bound else 1 - q:.3g} quantile"
        else:
            where = "inside its training range, nearest bound"
        return f"{label} {value:.4g} {where} {bound:.4g}"

    head = (f"novel regime since {v['since']}" if v["novel"] else
            "no mask fits but the HMM still explains the rows" if v["rule_novel"] else
            "the HMM does not explain the rows but a mask fits" if v["hmm_novel"] else "no novel regime")
    return (f"market {v['market']!r} on {v['as_of']}: {head} ({figure('best-mask entropy', 'entropy')}; "
            f"{figure('score spread', 'flatness')}; {figure('mean predictive log-likelihood', 'log_likelihood')})")


def novelty_alert(result: dict[str, Any], model_version: int) -> dict[str, Any] | None:
    """The ``novel_regime`` alert of a :func:`detect_novelty` verdict, or None when it is not novel.

    ``value`` and ``threshold`` are those of the rule's statistic that left its training range
    (``result["statistic"]``); ``message`` is the verdict's detail.
    """
    if not result["novel"]:
        return None
    key = result["statistic"]
    return {"kind": "novel_regime", "market": result["market"], "model_version": int(model_version),
            "as_of": result["as_of"], "value": float(result[key]), "threshold": float(result[f"{key}_threshold"]),
            "message": result["detail"]}
