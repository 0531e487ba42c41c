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
- ``market``: the market's ALL mask (no gating).

``predict`` uses only the last ``min_rows`` rows it is given (enough for the feature window, the
HMM window and the infer window), and ``predict_frame`` computes exactly that for every date at
once, so backtests, flows and the served model agree. ``predict_frames`` does it for several
modes, computing the features and the rolling posterior once.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch

from supsup_fin.data import validate_frame
from supsup_fin.data.frame import POSITIVE_COLUMNS, PRICE_COLUMNS
from supsup_fin.errors import DataError, MaskFileError
from supsup_fin.features import (
    Scaler,
    class_names,
    feature_array,
    feature_warmup,
    input_windows,
    make_features,
)
from supsup_fin.masks import FrozenNet, Mask, MaskBank
from supsup_fin.regimes import RegimeModel

log = logging.getLogger(__name__)

GateMode = Literal["hard", "soft", "ensemble", "infer", "market"]
GATE_MODES: tuple[str, ...] = ("hard", "soft", "ensemble", "infer", "market")
FORMAT_VERSION = 1


@dataclass(frozen=True)
class MarketModel:
    """Everything market-specific: scaler, class edges, prior, HMM and the regime -> mask map."""

    name: str
    scaler: Scaler
    class_edges: np.ndarray
    prior: np.ndarray
    regime: RegimeModel
    masks: dict[str, str]
    all_mask: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "scaler": self.scaler.to_dict(), "class_edges": self.class_edges.tolist(),
            "prior": self.prior.tolist(), "regime": self.regime.to_dict(),
            "masks": self.masks, "all_mask": self.all_mask,
        }

    @classmethod
    def from_dict(cls, name: str, d: dict[str, Any]) -> MarketModel:
        return cls(
            name=name, scaler=Scaler.from_dict(d["scaler"]),
            class_edges=np.asarray(d["class_edges"], np.float64), prior=np.asarray(d["prior"], np.float64),
            regime=RegimeModel.from_dict(d["regime"]), masks=dict(d["masks"]), all_mask=d["all_mask"],
        )


class RegimeGatedForecaster:
    """Routes each market's forecast through its regime masks on one frozen network.

    Parameters
    ----------
    markets : per-market models, by name.
    net, bank : the frozen base network and the bank holding every mask the markets name.
    feature_names, lookback, horizon : the feature window the masks were trained on.
    regime_window : feature rows the HMM filter runs over before it answers.
    mode : default gate mode.
    infer_window : input rows (up to and including t) whose task-inference scores the ``infer``
        mode averages for its decision at t.
    """

    def __init__(
        self, markets: dict[str, MarketModel], net: FrozenNet, bank: MaskBank, *,
        feature_names: tuple[str, ...], lookback: int, horizon: int, regime_window: int,
        mode: GateMode = "soft", infer_window: int = 16,
    ) -> None:
        self.markets = dict(markets)
        self.net = net
        self.bank = bank
        self.feature_names = tuple(feature_names)
        self.lookback = lookback
        self.horizon = horizon
        self.regime_window = regime_window
        self.mode = _check_mode(mode)
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

    def _market(self, market: str) -> MarketModel:
        if market not in self.markets:
            raise DataError(f"unknown market {market!r}; this model knows {sorted(self.markets)}")
        return self.markets[market]

    # -- the computation --------------------------------------------------------------------
    def inputs(self, market: str, prices: pd.DataFrame) -> np.ndarray:
        """The network inputs of every row of ``prices``: ``[n, lookback * features]`` float,
        the market's scaled feature windows (NaN where a window is incomplete)."""
        mm = self._market(market)
        raw = make_features(prices, self.feature_names, market=mm.name).to_numpy()
        return input_windows(mm.scaler.transform(raw), self.lookback)

    @torch.no_grad()
    def _route(
        self, mm: MarketModel, X: np.ndarray, rows: np.ndarray, post: np.ndarray, mode: str,
    ) -> tuple[np.ndarray, list[dict]]:
        """Class probabilities ``[n, C]`` and the masks used, for output ``rows`` of inputs ``X``.

        ``X`` is ``[T, in]`` (NaN where a row has no input), ``rows`` ``[n]`` indexes its rows with
        finite inputs, ``post`` ``[n, K]`` is the regime posterior at those rows. Only ``infer``
        reads rows of ``X`` before ``rows`` (the last ``infer_window`` rows up to each).
        """
        x = torch.as_tensor(X[rows], dtype=torch.float32)
        tasks = [mm.masks.get(r, mm.all_mask) for r in mm.regime.names_]
        if mode == "market":
            return self._per_row_masks(x, [mm.all_mask] * len(rows)), [{mm.all_mask: 1.0} for _ in rows]
        if mode in ("hard", "infer"):
            if mode == "hard":
                chosen = [tasks[k] for k in post.argmax(axis=1)]
            else:
                chosen = self._inferred_tasks(list(dict.fromkeys(tasks)), X, rows)
            return self._per_row_masks(x, chosen), [{t: 1.0} for t in chosen]
        weights: dict[str, np.ndarray] = {}
        for k, task in enumerate(tasks):
            weights[task] = weights.get(task, 0.0) + post[:, k]
        used = [{t: float(w[i]) for t, w in weights.items()} for i in range(len(rows))]
        if mode == "soft":
            alphas = {t: torch.as_tensor(w, dtype=torch.float32) for t, w in weights.items()}
            return torch.softmax(self.net(x, masks=self.bank, alphas=alphas).double(), dim=1).cpu().numpy(), used
        probs = np.zeros((len(rows), self.net.n_classes))
        for t, w in weights.items():  # ensemble: Σ_k p_k softmax(net(x; M_k)), each mask once
            probs += w[:, None] * torch.softmax(self.net(x, mask=self.bank[t]).double(), dim=1).cpu().numpy()
        return probs, used

    def _per_row_masks(self, x: torch.Tensor, chosen: list[str]) -> np.ndarray:
        """Probabilities ``[n, C]`` with row i through mask ``chosen[i]`` (one pass per mask)."""
        logits = torch.empty(len(chosen), self.net.n_classes)
        for task in sorted(set(chosen)):
            sel = np.flatnonzero([c == task for c in chosen])
            logits[sel] = self.net(x[sel], mask=self.bank[task]).cpu()
        return torch.softmax(logits.double(), dim=1).numpy()

    def _inferred_tasks(self, candidates: list[str], X: np.ndarray, rows: np.ndarray) -> list[str]:
        """The ``infer`` decision per output row: the candidate with the lowest mean score over
        the finite input rows among the last ``infer_window`` rows up to it."""
        if len(candidates) == 1 or not len(rows):
            return [candidates[0]] * len(rows)
        w = self.infer_window
        lo = max(int(rows[0]) - w + 1, 0)
        span = X[lo : int(rows[-1]) + 1]
        finite = np.isfinite(span).all(axis=1)
        scores = np.zeros((len(span), len(candidates)))
        scores[finite] = _row_task_scores(self.net, self.bank, candidates, span[finite])
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
        out["regime"] = [names[k] for k in post.argmax(axis=1)]
        for k, r in enumerate(names):
            out[f"regime_{r}"] = post[:, k]
        out["masks"] = [json.dumps(u, sort_keys=True) for u in used]
        out["mode"] = mode
        out.index.name = "as_of"
        return out

    def predict(self, market: str, prices: pd.DataFrame, mode: GateMode | None = None) -> dict[str, Any]:
        """Forecast made at the close of the last row, from the last ``min_rows`` rows only.

        Returns a dict: ``market``, ``as_of``, ``target_date`` (``as_of`` + ``horizon`` business
        days: the close the forecast class refers to), ``horizon``, ``probabilities`` (class -> p),
        ``regime`` and ``regime_posterior`` (P(z_{t+1} | x_1..t)), ``masks`` (mask -> weight),
        ``signal`` (p_up - p_down) and ``mode``.

        Equals the last row of :meth:`predict_frames` on the same rows within float rounding
        (~1e-15 in the posterior), computed on arrays: the features of the last
        ``feature_warmup + lookback + infer_window - 1`` rows only (they are window-exact) and
        the HMM filter's last row only (:meth:`RegimeModel.predict_next_proba_last`).
        """
        mode = _check_mode(mode or self.mode)
        mm = self._market(market)
        columns, dates = _price_columns(prices, market)
        need = self.min_rows
        if len(dates) < need:
            raise DataError(
                f"market {market!r}: got {len(dates)} rows of prices up to "
                f"{dates[-1].date()}, need at least min_rows={need}"
            )
        rows = self._feature_rows
        raw = feature_array({c: v[-rows:] for c, v in columns.items()}, self.feature_names, market=mm.name)
        X = input_windows(mm.scaler.transform(raw), self.lookback)
        regime_rows = self._regime_rows(market)
        close = columns["close"][-regime_rows:]
        if not np.isfinite(close).all():  # missing closes: the frame method raises, naming the first date
            mm.regime.predict_next_proba(pd.DataFrame({"close": close}, index=dates[-regime_rows:]))
        post = mm.regime.predict_next_proba_last(close)[None, :]
        probs, used = self._route(mm, X, np.array([len(X) - 1]), post, mode)
        p, names, as_of = probs[0], list(mm.regime.names_), dates[-1]
        return {
            "market": market, "as_of": str(as_of.date()),
            "target_date": str((as_of + pd.offsets.BDay(self.horizon)).date()), "horizon": self.horizon,
            "probabilities": {c: float(p[i]) for i, c in enumerate(self.classes)},
            "regime": names[int(post[0].argmax())],
            "regime_posterior": {r: float(post[0, k]) for k, r in enumerate(names)},
            "masks": used[0], "signal": float(p[-1] - p[0]), "mode": mode,
        }

    def predict_frame(self, market: str, prices: pd.DataFrame, mode: GateMode | None = None) -> pd.DataFrame:
        """:meth:`predict` for every date that has ``min_rows`` rows of history, in one pass.

        Returns a frame indexed by ``as_of`` with ``p_<class>``, ``signal``, ``regime``,
        ``regime_<name>``, ``masks`` (JSON) and ``mode`` columns.
        """
        mode = _check_mode(mode or self.mode)
        return self.predict_frames(market, prices, [mode])[mode]

    def predict_frames(self, market: str, prices: pd.DataFrame, modes: Sequence[str]) -> dict[str, pd.DataFrame]:
        """:meth:`predict_frame` for each of ``modes``, the features and posterior computed once.

        Returns
        -------
        dict mode -> frame, in the order of ``modes`` (repeats collapse).
        """
        modes = list(dict.fromkeys(_check_mode(m) for m in modes))
        mm = self._market(market)
        prices = validate_frame(prices, market)
        X = self.inputs(market, prices)
        post = mm.regime.rolling_next_proba(prices, self.regime_window).reindex(prices.index).to_numpy()
        ok = np.arange(len(prices)) >= self.min_rows - 1
        ok &= np.isfinite(X).all(axis=1) & np.isfinite(post).all(axis=1)
        rows = np.flatnonzero(ok)
        out = {}
        for mode in modes:
            probs, used = self._route(mm, X, rows, post[rows], mode)
            out[mode] = self._rows(mm, prices.index[rows], probs, post[rows], used, mode)
        return out

    # -- persistence ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "network": {"sizes": list(self.net.sizes), "seed": self.net.seed, "superfluous": self.net.superfluous,
                        "base_hash": self.net.weights_hash()},
            "features": {"names": list(self.feature_names), "lookback": self.lookback, "horizon": self.horizon},
            "regime_window": self.regime_window, "mode": self.mode, "infer_window": self.infer_window,
            "min_rows": self.min_rows,
            "classes": self.classes,
            "markets": {name: m.to_dict() for name, m in self.markets.items()},
        }

    def save(self, path: str | Path) -> Path:
        """Write ``forecaster.json`` and the mask bank to directory ``path``, atomically."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
        try:
            self.bank.save(tmp / "bank")
            (tmp / "forecaster.json").write_text(json.dumps(self.to_dict(), indent=1))
            if path.exists():
                shutil.rmtree(path)
            os.replace(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return path

    @classmethod
    def load(cls, path: str | Path) -> RegimeGatedForecaster:
        """Rebuild the forecaster: the base network from its seed, the masks from the bank."""
        path = Path(path)
        spec_file = path / "forecaster.json"
        try:
            spec = json.loads(spec_file.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise MaskFileError(f"{spec_file}: cannot read forecaster spec: {err}") from None
        if spec.get("format_version") != FORMAT_VERSION:
            raise MaskFileError(
                f"{spec_file}: format_version {spec.get('format_version')!r}, expected {FORMAT_VERSION}"
            )
        net = FrozenNet(sizes=tuple(spec["network"]["sizes"]), seed=spec["network"]["seed"],
                        superfluous=spec["network"].get("superfluous", 0))
        if net.weights_hash() != spec["network"]["base_hash"]:
            raise MaskFileError(
                f"{spec_file}: base network hash {spec['network']['base_hash'][:12]}... does not match "
                f"the network rebuilt from seed {spec['network']['seed']} ({net.weights_hash()[:12]}...)"
            )
        bank = MaskBank.load(path / "bank", net)
        f = spec["features"]
        markets = {n: MarketModel.from_dict(n, d) for n, d in spec["markets"].items()}
        return cls(
            markets, net, bank, feature_names=tuple(f["names"]), lookback=f["lookback"],
            horizon=f["horizon"], regime_window=spec["regime_window"], mode=spec["mode"],
            infer_window=spec.get("infer_window", 16),
        )


_DAY_NS = 86_400 * 10**9


def _price_columns(prices: pd.DataFrame, market: str) -> tuple[dict[str, np.ndarray], pd.DatetimeIndex]:
    """The columns of ``validate_frame(prices, market)`` as contiguous float64 arrays ``[n]``, and its dates.

    A frame already in the canonical form :func:`~supsup_fin.data.validate_frame` returns (known
    columns in canonical order, tz-naive ``datetime64[ns]`` dates at midnight, strictly increasing,
    numeric values it accepts) is checked by a few numpy reductions instead, and its own values
    (as float64, the cast validate_frame makes) and dates come back; any other frame goes through
    it, to be canonicalised or refused.
    """
    values = _canonical_values(prices)
    frame = prices
    if values is None:
        frame = validate_frame(prices, market)
        values = frame.to_numpy(dtype=np.float64)
    return {c: np.ascontiguousarray(values[:, j]) for j, c in enumerate(frame.columns)}, frame.index


def _canonical_values(prices: object) -> np.ndarray | None:
    """``prices``' values ``[n, k]`` where ``validate_frame`` would return the same values and dates
    and raise nothing; ``None`` otherwise."""
    if not (isinstance(prices, pd.DataFrame) and isinstance(prices.index, pd.DatetimeIndex)
            and prices.index.dtype == np.dtype("datetime64[ns]") and len(prices)):
        return None
    cols = list(prices.columns)
    if "close" not in cols or cols != [c for c in PRICE_COLUMNS if c in cols]:
        return None
    ns = prices.index.asi8
    if ns[0] == np.iinfo(np.int64).min or (ns % _DAY_NS).any() or (ns[1:] <= ns[:-1]).any():
        return None  # NaT, a time of day, or dates not strictly increasing
    values = prices.to_numpy()
    if values.dtype != np.float64:  # a non-numeric or bool column makes it object or bool
        return None
    positive = [j for j, c in enumerate(cols) if c in POSITIVE_COLUMNS]
    if np.isinf(values).any() or (values[:, positive] <= 0).any():
        return None
    if "volume" in cols and (values[:, cols.index("volume")] < 0).any():
        return None
    return values


def _check_mode(mode: str) -> str:
    if mode not in GATE_MODES:
        raise ValueError(f"unknown gate mode {mode!r}; valid: {list(GATE_MODES)}")
    return mode


def _row_task_scores(
    net: FrozenNet, bank: Mapping[str, Mask], names: Sequence[str], X: np.ndarray | torch.Tensor,
    objective: Literal["entropy", "superfluous"] = "entropy",
) -> np.ndarray:
    """SupSup task-inference scores of every row on its own, in one forward and backward pass.

    Row i's score of mask ``names[k]`` is ``∂objective_i/∂α_k`` at ``α = 1/len(names)``: the
    first-round score :func:`supsup_fin.masks.infer_task` gives for ``X[i:i+1]`` with the same
    ``objective`` (``entropy``, its default: ``H`` of the softmax over every output, superfluous
    units included; ``superfluous``: SupSup's ``G``). Lower is more likely. Each row gets its own
    coefficient vector ``[N]`` per mask, so the gradient of the summed objective w.r.t. it is the
    per-row gradient.

    Parameters
    ----------
    net, bank : the frozen network and a mapping holding every named mask.
    names : candidate masks, ``k`` distinct names.
    X : inputs ``[N, in]``, finite.
    objective : ``entropy`` or ``superfluous`` (needs ``net.superfluous > 0``).

    Returns
    -------
    ``[N, k]`` float64 scores.
    """
    names = list(names)
    if not names or len(set(names)) != len(names):
        raise ValueError(f"names must be distinct and non-empty, got {names}")
    if objective not in ("entropy", "superfluous") or (objective == "superfluous" and not net.superfluous):
        raise ValueError(
            f"objective must be 'entropy', or 'superfluous' on a net with superfluous units, got {objective!r}"
        )
    x = torch.as_tensor(X, dtype=torch.float32)
    with torch.enable_grad():
        alphas = {n: torch.full((x.shape[0],), 1.0 / len(names), device=net.device, requires_grad=True)
                  for n in names}
        out = net(x, masks={n: bank[n] for n in names}, alphas=alphas, all_outputs=True)
        if objective == "superfluous":  # G: the gradient flows through the superfluous logits only
            value = torch.cat([out[:, : net.n_classes].detach(), out[:, net.n_classes :]], dim=1)
            value = value.logsumexp(dim=1)
        else:
            logp = torch.log_softmax(out, dim=1)
            value = -(logp.exp() * logp).sum(dim=1)
        grads = torch.autograd.grad(value.sum(), [alphas[n] for n in names])
    return torch.stack(grads, dim=1).detach().cpu().numpy().astype(np.float64)
