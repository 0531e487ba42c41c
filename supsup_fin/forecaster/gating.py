"""The regime-gated forecaster: HMM posterior -> supermask(s) -> class probabilities.

For a market and its recent prices, the forecaster computes the causal feature window and the
one-step-ahead regime posterior P(z_{t+1} | x_1..t), then routes the input through that
market's regime masks on the shared frozen network:

- ``hard``: the mask of the most probable regime;
- ``soft``: one forward pass through ``W ⊙ Σ_k p_k M_k`` (posterior-weighted superposition);
- ``ensemble``: the posterior-weighted mixture of the regime masks' outputs,
  ``Σ_k p_k softmax(net(x; M_k))`` (a mask named by several regimes runs once, with their summed
  weight);
- ``infer``: SupSup task inference instead of the HMM. Among the distinct masks the market's
  regimes name, each row t scores mask k by ``∂H_t/∂α_k`` at ``α = 1/k`` (``H``: the entropy of
  the softmax over every output, superfluous units included, as :func:`supsup_fin.masks.infer_task`
  does by default); the decision at t takes the mean score over the last
  ``infer_window`` rows up to t and runs the mask with the lowest. The regime columns still
  report the HMM posterior;
- ``market``: the market's ALL mask (no gating);
- ``auto``: each market's own mode, chosen on its held-out rows
  (:mod:`supsup_fin.forecaster.choose`) and kept in :attr:`MarketModel.mode`.

Each mask's output goes through its calibration map (:mod:`supsup_fin.forecaster.calibration`,
fitted on held-out rows; ``soft`` has one map per market for its superposed pass), and the
decision layer (:mod:`supsup_fin.decision`) turns the probabilities into an expected forward
return and a position. With ``stochastic_samples > 0`` a mask that stores keep probabilities
(hard-concrete) answers with the mean over that many sampled masks instead of its bits, in
every mode; the samples are drawn once per mask from a generator seeded by the mask's name, so
the same rows get the same forecast in every call.

``predict`` uses only the last ``min_rows`` rows it is given (enough for the feature window, the
HMM window and the infer window), and ``predict_frame`` computes exactly that for every date at
once, so backtests, flows and the served model agree. ``predict_frames`` does it for several
modes, computing the features and the rolling posterior once. Saving and loading live in
:mod:`supsup_fin.forecaster.persist`; the gate modes are named in :mod:`supsup_fin.gate_modes`.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from supsup_fin.data.frame import price_arrays, validate_frame
from supsup_fin.decision import DecisionRule
from supsup_fin.errors import DataError, MaskFileError
from supsup_fin.features import (
    FEATURES,
    class_names,
    feature_array,
    feature_warmup,
    input_windows,
    make_features,
)
from supsup_fin.gate_modes import GATE_MODES, GateMode, check_gate_mode
from supsup_fin.forecaster.market_model import INFER, SOFT, MarketModel
from supsup_fin.masks import FrozenNet, Mask, MaskBank, row_task_scores, sample_masks

log = logging.getLogger(__name__)

__all__ = ["ABSURD_Z", "GATE_MODES", "INFER", "FrameInputs", "OOD_Z", "SOFT", "GateMode", "MarketModel", "RegimeGatedForecaster"]

OOD_Z = 10.0
"""A live input feature this many training standard deviations from its training mean flags the
forecast ``out_of_distribution`` (:meth:`RegimeGatedForecaster.check_inputs`)."""
ABSURD_Z = 50.0
"""Beyond this many, a live input feature is refused as a data error."""


@dataclass(frozen=True)
class FrameInputs:
    """One market's forecast inputs for every row of a price frame (:meth:`RegimeGatedForecaster.frame_inputs`)."""

    dates: pd.DatetimeIndex
    X: np.ndarray
    """``[n, in]`` network inputs (NaN where a feature window is incomplete)."""
    post: np.ndarray
    """``[n, K]`` one-step-ahead regime posterior (NaN before the HMM window is full)."""
    rows: np.ndarray
    """The rows with a forecast: enough history, finite inputs and posterior."""


class RegimeGatedForecaster:
    """Routes each market's forecast through its regime masks on one frozen network.

    Parameters
    ----------
    markets : per-market models, by name.
    net, bank : the frozen base network and the bank holding every mask the markets name.
    feature_names, lookback, horizon : the feature window the masks were trained on.
    regime_window : feature rows the HMM filter runs over before it answers.
    mode : default gate mode (``auto``: each market's chosen mode).
    infer_window : input rows (up to and including t) whose task-inference scores the ``infer``
        mode averages for its decision at t.
    stochastic_samples : 0 for the masks' bits; S > 0 for the mean over S sampled masks of each
        mask that stores keep probabilities.
    decision : how probabilities become a position (default: half-Kelly, cap 1, 15 % vol target).
    """

    def __init__(
        self, markets: dict[str, MarketModel], net: FrozenNet, bank: MaskBank, *,
        feature_names: tuple[str, ...], lookback: int, horizon: int, regime_window: int,
        mode: GateMode | str = "soft", infer_window: int = 16, stochastic_samples: int = 0,
        decision: DecisionRule | None = None,
    ) -> None:
        self.markets = dict(markets)
        self.net = net
        self.bank = bank
        self.feature_names = tuple(feature_names)
        self.lookback = lookback
        self.horizon = horizon
        self.regime_window = regime_window
        self.mode = mode if mode == "auto" else check_gate_mode(mode)
        if isinstance(stochastic_samples, bool) or not isinstance(stochastic_samples, (int, np.integer)) \
                or stochastic_samples < 0:
            raise ValueError(f"stochastic_samples expected an int >= 0, got {stochastic_samples!r}")
        self.stochastic_samples = int(stochastic_samples)
        self.decision = decision or DecisionRule()
        self._samples: dict[str, list[Mask]] = {}
        if isinstance(infer_window, bool) or not isinstance(infer_window, (int, np.integer)) or infer_window < 1:
            raise ValueError(f"infer_window expected an int >= 1, got {infer_window!r}")
        self.infer_window = int(infer_window)
        for m in self.markets.values():
            missing = [t for t in {*m.masks.values(), m.all_mask} if t not in bank]
            if missing:
                raise MaskFileError(f"market {m.name!r} names masks {missing} that the bank does not hold")

    @property
    def classes(self) -> list[str]:
        return class_names(len(next(iter(self.markets.values())).prior))

    def to(self, device: str | torch.device) -> RegimeGatedForecaster:
        """This forecaster running its network on ``device``: itself when the network is there, else
        a shallow copy whose network's weights are moved (markets, bank and masks shared; results
        still come back as CPU arrays). This forecaster is left as it was."""
        if self.net.device == torch.device(device):
            return self
        out = copy.copy(self)
        out.net = copy.copy(self.net).to(device)
        return out

    def _regime_rows(self, market: str) -> int:
        return self.markets[market].regime.min_rows(self.regime_window)

    @property
    def _feature_rows(self) -> int:
        """Price rows the inputs of the last ``infer_window`` rows need."""
        return feature_warmup(self.feature_names) + self.lookback + self.infer_window - 1

    @property
    def min_rows(self) -> int:
        """Price rows a forecast needs: the longer of the feature (+ infer) window and the HMM window."""
        return max([self._feature_rows] + [self._regime_rows(m) for m in self.markets])

    def market_model(self, market: str) -> MarketModel:
        """The model of ``market`` (:class:`DataError` naming the known markets if none)."""
        if market not in self.markets:
            raise DataError(f"unknown market {market!r}; this model knows {sorted(self.markets)}")
        return self.markets[market]

    # -- the computation --------------------------------------------------------------------
    def inputs(self, market: str, prices: pd.DataFrame) -> np.ndarray:
        """The network inputs of every row of ``prices``: ``[n, lookback * features]`` float,
        the market's scaled feature windows (NaN where a window is incomplete)."""
        mm = self.market_model(market)
        raw = make_features(prices, self.feature_names, market=mm.name).to_numpy()
        return input_windows(mm.scaler.transform(raw), self.lookback)

    def _sampled(self, task: str) -> list[Mask] | None:
        """The S sampled masks of ``task`` (``None``: use its bits), drawn once per forecaster."""
        if not self.stochastic_samples or not self.bank.has_probabilities(task):
            return None
        if task not in self._samples:
            seed = int.from_bytes(hashlib.sha256(task.encode("utf-8")).digest()[:7], "little")
            gen = torch.Generator().manual_seed(seed)
            self._samples[task] = list(sample_masks(self.bank.probabilities(task), self.stochastic_samples, gen))
        return self._samples[task]

    def task_logits(self, x: torch.Tensor, task: str) -> torch.Tensor:
        """``[n, C]`` float64 logits of mask ``task`` (stochastic: log of the mean sampled probabilities)."""
        sampled = self._sampled(task)
        if sampled is None:
            return self.net(x, mask=self.bank[task]).double().cpu()
        mean = sum(torch.softmax(self.net(x, mask=m).double(), dim=1) for m in sampled) / len(sampled)
        return mean.clamp_min(1e-300).log().cpu()

    def soft_logits(self, x: torch.Tensor, weights: dict[str, np.ndarray]) -> torch.Tensor:
        """``[n, C]`` logits of the posterior-weighted superposition (stochastic: averaged over samples)."""
        alphas = {t: torch.as_tensor(w, dtype=torch.float32) for t, w in weights.items()}
        sampled = {t: self._sampled(t) for t in weights}
        if all(v is None for v in sampled.values()):
            return self.net(x, masks=self.bank, alphas=alphas).double().cpu()
        total = 0.0
        for i in range(self.stochastic_samples):
            masks = {t: self.bank[t] if v is None else v[i] for t, v in sampled.items()}
            total = total + torch.softmax(self.net(x, masks=masks, alphas=alphas).double(), dim=1)
        return (total / self.stochastic_samples).clamp_min(1e-300).log().cpu()

    @staticmethod
    def _calibrated(mm: MarketModel, key: str, logits: torch.Tensor) -> np.ndarray:
        """Probabilities ``[n, C]`` through ``mm``'s map for ``key`` (none: the plain softmax)."""
        cal = mm.calibrators.get(key)
        if cal is None:
            return torch.softmax(logits, dim=1).numpy()
        return cal(torch.log_softmax(logits, dim=1).numpy())

    @torch.no_grad()
    def route(
        self, mm: MarketModel, X: np.ndarray, rows: np.ndarray, post: np.ndarray, mode: str,
    ) -> tuple[np.ndarray, list[dict]]:
        """Calibrated class probabilities ``[n, C]`` and the masks used, for output ``rows`` of ``X``.

        ``X`` is ``[T, in]`` (NaN where a row has no input), ``rows`` ``[n]`` indexes its rows with
        finite inputs, ``post`` ``[n, K]`` is the regime posterior at those rows. Only ``infer``
        reads rows of ``X`` before ``rows`` (the last ``infer_window`` rows up to each).
        """
        x = torch.as_tensor(X[rows], dtype=torch.float32)
        tasks = [mm.masks.get(r, mm.all_mask) for r in mm.regime.names_]
        if mode == "market":
            return self._per_row_masks(mm, x, [mm.all_mask] * len(rows)), [{mm.all_mask: 1.0} for _ in rows]
        if mode in ("hard", "infer"):
            if mode == "hard":
                chosen = [tasks[k] for k in post.argmax(axis=1)]
            else:
                chosen = self.inferred_tasks(list(dict.fromkeys(tasks)), X, rows)
            return self._per_row_masks(mm, x, chosen, INFER if mode == "infer" else ""), [{t: 1.0} for t in chosen]
        weights: dict[str, np.ndarray] = {}
        for k, task in enumerate(tasks):
            weights[task] = weights.get(task, 0.0) + post[:, k]
        used = [{t: float(w[i]) for t, w in weights.items()} for i in range(len(rows))]
        if mode == "soft":
            return self._calibrated(mm, SOFT, self.soft_logits(x, weights)), used
        probs = np.zeros((len(rows), self.net.n_classes))
        for t, w in weights.items():  # ensemble: Σ_k p_k calibrated softmax(net(x; M_k)), each mask once
            probs += w[:, None] * self._calibrated(mm, t, self.task_logits(x, t))
        return probs, used

    def _per_row_masks(self, mm: MarketModel, x: torch.Tensor, chosen: list[str], key: str = "") -> np.ndarray:
        """Calibrated probabilities ``[n, C]`` with row i through mask ``chosen[i]`` (one pass per mask);
        each mask's map is the one keyed ``key + mask`` when the market has it, else the mask's own."""
        probs = np.empty((len(chosen), self.net.n_classes))
        for task in sorted(set(chosen)):
            sel = np.flatnonzero([c == task for c in chosen])
            cal_key = key + task if key + task in mm.calibrators else task
            probs[sel] = self._calibrated(mm, cal_key, self.task_logits(x[sel], task))
        return probs

    def inferred_tasks(self, candidates: list[str], X: np.ndarray, rows: np.ndarray) -> list[str]:
        """The ``infer`` decision per output row: the candidate with the lowest mean score over
        the finite input rows among the last ``infer_window`` rows up to it."""
        if len(candidates) == 1 or not len(rows):
            return [candidates[0]] * len(rows)
        w = self.infer_window
        lo = max(int(rows[0]) - w + 1, 0)
        span = X[lo : int(rows[-1]) + 1]
        finite = np.isfinite(span).all(axis=1)
        scores = np.zeros((len(span), len(candidates)))
        scores[finite] = row_task_scores(self.net, self.bank, candidates, span[finite])
        total, count = np.zeros((len(rows), len(candidates))), np.zeros(len(rows))
        at = rows - lo
        for lag in range(w):  # fixed summation order: the same sum whatever rows came before
            i = at - lag
            ok = i >= 0
            total[ok] += scores[i[ok]]
            count[ok] += finite[i[ok]]
        return [candidates[k] for k in (total / count[:, None]).argmin(axis=1)]

    def _rows(self, mm: MarketModel, dates: pd.DatetimeIndex, probs: np.ndarray, post: np.ndarray, used: list[dict], mode: str) -> pd.DataFrame:
        out = pd.DataFrame(probs, index=dates, columns=[f"p_{c}" for c in self.classes])
        names = list(mm.regime.names_)
        out.insert(0, "market", mm.name)
        out["signal"] = out[f"p_{self.classes[-1]}"] - out[f"p_{self.classes[0]}"]
        out["expected_return"], out["position"] = self._decide(mm, probs)
        out["regime"] = [names[k] for k in post.argmax(axis=1)]
        for k, r in enumerate(names):
            out[f"regime_{r}"] = post[:, k]
        out["masks"] = [json.dumps(u, sort_keys=True) for u in used]
        out["mode"] = mode
        out.index.name = "as_of"
        return out

    def _decide(self, mm: MarketModel, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Expected ``horizon``-day log return and recommended position ``[n]`` each (NaN for a model
        without class returns under the ``kelly`` rule)."""
        if mm.class_returns is None and self.decision.rule == "kelly":
            return np.full(len(probs), np.nan), np.full(len(probs), np.nan)
        return self.decision.positions(probs, mm.class_returns, self.horizon)

    def predict(self, market: str, prices: pd.DataFrame, mode: GateMode | None = None) -> dict[str, Any]:
        """Forecast made at the close of the last row, from the last ``min_rows`` rows only.

        Returns a dict: ``market``, ``as_of``, ``target_date`` (``as_of`` + ``horizon`` business
        days: the close the forecast class refers to), ``horizon``, ``probabilities`` (class -> p),
        ``regime`` and ``regime_posterior`` (P(z_{t+1} | x_1..t)), ``masks`` (mask -> weight),
        ``signal`` (p_up - p_down), ``expected_return`` (of the ``horizon``-day log return),
        ``position`` (the decision layer's recommendation), ``prior`` (class -> training frequency:
        what knowing nothing says), ``mode`` (the gate mode that ran) and ``out_of_distribution``
        (``""``, or the first input feature far outside training: :meth:`check_inputs`).

        Raises :class:`DataError` for inputs :meth:`check_inputs` refuses, and rather than
        return a probability, position or posterior that is not finite.

        Equals the last row of :meth:`predict_frames` on the same rows within float rounding
        (~1e-15 in the posterior), computed on arrays: the features of the last
        ``feature_warmup + lookback + infer_window - 1`` rows only (they are window-exact) and
        the HMM filter's last row only (:meth:`~supsup_fin.regimes.RegimeModel.predict_next_proba_last`).
        """
        mm = self.market_model(market)
        mode = check_gate_mode(mm.gate_mode(mode or self.mode))
        columns, dates = price_arrays(prices, market)
        need = self.min_rows
        if len(dates) < need:
            raise DataError(
                f"market {market!r}: got {len(dates)} rows of prices up to "
                f"{dates[-1].date()}, need at least min_rows={need}"
            )
        rows, regime_rows = self._feature_rows, self._regime_rows(market)
        span = max(rows, regime_rows)
        missing = np.flatnonzero(~np.isfinite(columns["close"][-span:]))
        if missing.size:
            raise DataError(f"market {market!r}: column 'close' expected finite numbers, got {missing.size} missing "
                            f"value(s) in the last {span} rows, first on {dates[len(dates) - span + missing[0]].date()}")
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # check_inputs names what is not finite
            raw = feature_array({c: v[-rows:] for c, v in columns.items()}, self.feature_names, market=mm.name)
        flag = self.check_inputs(mm, raw, columns["close"][-rows:], dates[-rows:], mode)
        X = input_windows(mm.scaler.transform(raw), self.lookback)
        post = mm.regime.predict_next_proba_last(columns["close"][-regime_rows:])[None, :]
        probs, used = self.route(mm, X, np.array([len(X) - 1]), post, mode)
        p, names, as_of = probs[0], list(mm.regime.names_), dates[-1]
        mu, pos = self._decide(mm, probs)
        if not (np.isfinite(p).all() and np.isfinite(pos[0]) and np.isfinite(post).all()):
            raise DataError(
                f"market {market!r}: no finite forecast at {as_of.date()} (probabilities {p.round(4).tolist()}, "
                f"position {pos[0]}, regime posterior {post[0].round(4).tolist()})"
                + ("; the model has no class returns for its kelly rule" if mm.class_returns is None else "")
            )
        return {
            "market": market, "as_of": str(as_of.date()),
            "target_date": str((as_of + pd.offsets.BDay(self.horizon)).date()), "horizon": self.horizon,
            "probabilities": {c: float(p[i]) for i, c in enumerate(self.classes)},
            "regime": names[int(post[0].argmax())],
            "regime_posterior": {r: float(post[0, k]) for k, r in enumerate(names)},
            "masks": used[0], "signal": float(p[-1] - p[0]), "expected_return": float(mu[0]),
            "position": float(pos[0]), "prior": {c: float(mm.prior[i]) for i, c in enumerate(self.classes)},
            "mode": mode, "out_of_distribution": flag,
        }

    def check_inputs(
        self, mm: MarketModel, raw: np.ndarray, close: np.ndarray, dates: pd.DatetimeIndex, mode: str,
    ) -> str:
        """Refuse the feature rows ``raw`` ``[n, F]`` (unscaled, from closes ``close`` ``[n]`` on
        ``dates`` ``[n]``) that a forecast in ``mode`` cannot stand on; describe what lies outside
        the training distribution.

        Reads the rows the network's input takes: the last ``lookback`` (``infer``: the last
        ``lookback + infer_window - 1``). Raises :class:`DataError` when ``close`` does not move
        over all ``n`` rows (zero volatility: stale prices), and for a feature that is not finite
        or lies more than :data:`ABSURD_Z` training standard deviations from its training mean (a
        price in the wrong unit, a typo). Returns ``""``, or for a feature more than :data:`OOD_Z`
        from its mean (rarer than any day of 20 years of S&P 500 or NASDAQ; a few crash days of
        WTI) a description: that forecast stands, flagged. Both name the market and the first such
        feature; for a close-only feature also the first close it reads whose daily move is at
        least half its largest, and its date (where a spike or a unit change starts).
        """
        if (close == close[0]).all():
            raise DataError(f"market {mm.name!r}: column 'close' is {float(close[0]):.6g} on all {len(close)} rows "
                            f"{dates[0].date()}..{dates[-1].date()} the features read: zero volatility, which "
                            "no training row had (stale prices?)")
        n = self.lookback + (self.infer_window - 1 if mode == "infer" else 0)
        with np.errstate(over="ignore", invalid="ignore"):
            z = (raw[-n:] - mm.scaler.mean) / mm.scaler.std
        bad = ~np.isfinite(z) | (np.abs(z) > ABSURD_Z)
        where = np.argwhere(bad if bad.any() else np.abs(z) > OOD_Z)
        if not len(where):
            return ""
        i, j = where[0]
        r, name = len(raw) - n + i, self.feature_names[j]
        spec = FEATURES[name]
        what = f"feature {name!r} on {dates[r].date()} (from column {', '.join(map(repr, spec.requires))})"
        if spec.requires == ("close",) and spec.warmup:
            lo = max(r - spec.warmup - 1, 0)
            moves = np.abs(np.diff(np.log(close[lo : r + 1])))
            k = lo + 1 + int(np.argmax(moves >= moves.max() / 2))  # a spike's way up, not its way down
            what = (f"column 'close' on {dates[k].date()} ({float(close[k - 1]):.6g} the day before, then "
                    f"{float(close[k]):.6g}), read by feature {name!r} on {dates[r].date()},")
        if not bad.any():
            return f"market {mm.name!r}: {what} is {z[i, j]:+.1f} training standard deviations from its mean (beyond {OOD_Z:g})"
        value = float(raw[r, j])
        size = f"{z[i, j]:+.3g} training standard deviations from its mean" if np.isfinite(value) else "not finite"
        raise DataError(f"market {mm.name!r}: {what} is {value:.6g}, {size}; expected a finite value within "
                        f"{ABSURD_Z:g} standard deviations (check the prices up to that date)")

    def predict_frame(self, market: str, prices: pd.DataFrame, mode: GateMode | None = None) -> pd.DataFrame:
        """:meth:`predict` for every date that has ``min_rows`` rows of history, in one pass.

        Returns a frame indexed by ``as_of`` with ``p_<class>``, ``signal``, ``expected_return``,
        ``position``, ``regime``, ``regime_<name>``, ``masks`` (JSON) and ``mode`` columns.
        """
        mode = mode or self.mode
        return self.predict_frames(market, prices, [mode])[mode]

    def predict_frames(self, market: str, prices: pd.DataFrame, modes: Sequence[str]) -> dict[str, pd.DataFrame]:
        """:meth:`predict_frame` for each of ``modes``, the features and posterior computed once.

        Returns
        -------
        dict mode -> frame, in the order of ``modes`` (repeats collapse); under ``auto`` the frame's
        ``mode`` column names the market's chosen mode.
        """
        mm = self.market_model(market)
        modes = list(dict.fromkeys(m if m == "auto" else check_gate_mode(m) for m in modes))
        runs = {m: check_gate_mode(mm.gate_mode(m)) for m in modes}
        fi = self.frame_inputs(market, prices)
        out: dict[str, pd.DataFrame] = {}
        for mode in modes:
            same = next((m for m in out if runs[m] == runs[mode]), None)
            if same is not None:  # auto runs a mode already computed
                out[mode] = out[same]
                continue
            probs, used = self.route_frame(market, fi, runs[mode])
            out[mode] = self._rows(mm, fi.dates[fi.rows], probs, fi.post[fi.rows], used, runs[mode])
        return out

    def route_frame(self, market: str, fi: FrameInputs, mode: str) -> tuple[np.ndarray, list[dict]]:
        """:meth:`route` over the forecast rows of ``fi`` (:meth:`frame_inputs`) under ``mode``
        (``auto``: the market's chosen mode): probabilities ``[len(fi.rows), C]`` and the masks used."""
        mm = self.market_model(market)
        return self.route(mm, fi.X, fi.rows, fi.post[fi.rows], check_gate_mode(mm.gate_mode(mode)))

    def frame_inputs(self, market: str, prices: pd.DataFrame) -> FrameInputs:
        """What :meth:`predict_frames` computes once for every mode: each row's network inputs and
        regime posterior, and the rows that have a forecast. They depend on the market's model and
        ``prices`` only (not on the bank), so a caller that re-runs the same rows on a grown bank
        can keep them and call :meth:`route_frame` itself."""
        mm = self.market_model(market)
        prices = validate_frame(prices, market)
        X = self.inputs(market, prices)
        post = mm.regime.rolling_next_proba(prices, self.regime_window).reindex(prices.index).to_numpy()
        ok = np.arange(len(prices)) >= self.min_rows - 1
        ok &= np.isfinite(X).all(axis=1) & np.isfinite(post).all(axis=1)
        return FrameInputs(prices.index, X, post, np.flatnonzero(ok))

    # -- persistence (supsup_fin.forecaster.persist) -----------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The content of ``forecaster.json`` (:func:`~supsup_fin.forecaster.persist.forecaster_spec`)."""
        from supsup_fin.forecaster.persist import forecaster_spec  # persist builds on this module

        return forecaster_spec(self)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write ``forecaster.json`` and the mask bank to directory ``path``, atomically
        (:func:`~supsup_fin.forecaster.persist.save_forecaster`)."""
        from supsup_fin.forecaster.persist import save_forecaster

        return save_forecaster(self, path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> RegimeGatedForecaster:
        """Rebuild the forecaster saved at ``path``: the base network from its seed, the masks from
        the bank (:func:`~supsup_fin.forecaster.persist.load_forecaster`)."""
        from supsup_fin.forecaster.persist import load_forecaster

        return load_forecaster(path)
