"""The regime-gated forecaster: HMM posterior -> supermask(s) -> class probabilities.

For a market and its recent prices, the forecaster computes the causal feature window and the
one-step-ahead regime posterior P(z_{t+1} | x_1..t), then routes the input through that
market's regime masks on the shared frozen network:

- ``hard``: the mask of the most probable regime;
- ``soft``: one forward pass through ``W ⊙ Σ_k p_k M_k`` (posterior-weighted superposition);
- ``market``: the market's ALL mask (no gating).

``predict`` uses only the last ``min_rows`` rows it is given, and ``predict_frame`` computes
exactly that for every date at once, so backtests, flows and the served model agree.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch

from supsup_fin.data import validate_frame
from supsup_fin.errors import DataError, MaskFileError
from supsup_fin.features import Scaler, class_names, feature_warmup, input_windows, make_features
from supsup_fin.masks import FrozenNet, MaskBank
from supsup_fin.regimes import RegimeModel

log = logging.getLogger(__name__)

GateMode = Literal["hard", "soft", "market"]
GATE_MODES: tuple[str, ...] = ("hard", "soft", "market")
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
    """

    def __init__(
        self, markets: dict[str, MarketModel], net: FrozenNet, bank: MaskBank, *,
        feature_names: tuple[str, ...], lookback: int, horizon: int, regime_window: int,
        mode: GateMode = "soft",
    ) -> None:
        self.markets = dict(markets)
        self.net = net
        self.bank = bank
        self.feature_names = tuple(feature_names)
        self.lookback = lookback
        self.horizon = horizon
        self.regime_window = regime_window
        self.mode = _check_mode(mode)
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
    def min_rows(self) -> int:
        """Price rows a forecast needs: the longer of the feature window and the HMM window."""
        feat = feature_warmup(self.feature_names) + self.lookback
        return max([feat] + [self._regime_rows(m) for m in self.markets])

    def _market(self, market: str) -> MarketModel:
        if market not in self.markets:
            raise DataError(f"unknown market {market!r}; this model knows {sorted(self.markets)}")
        return self.markets[market]

    # -- the computation --------------------------------------------------------------------
    def _inputs(self, mm: MarketModel, prices: pd.DataFrame) -> np.ndarray:
        raw = make_features(prices, self.feature_names, market=mm.name).to_numpy()
        return input_windows(mm.scaler.transform(raw), self.lookback)

    @torch.no_grad()
    def _route(self, mm: MarketModel, X: np.ndarray, post: np.ndarray, mode: str) -> tuple[np.ndarray, list[dict]]:
        """Class probabilities ``[N, C]`` and the masks used per row, for inputs ``[N, in]``."""
        x = torch.as_tensor(X, dtype=torch.float32)
        names = list(mm.regime.names_)
        tasks = [mm.masks.get(r, mm.all_mask) for r in names]
        if mode == "market":
            logits = self.net(x, mask=self.bank[mm.all_mask])
            used = [{mm.all_mask: 1.0} for _ in range(len(X))]
        elif mode == "hard":
            pick = post.argmax(axis=1)
            logits = torch.empty(len(X), self.net.sizes[-1])
            for task in sorted(set(tasks)):
                rows = np.flatnonzero([tasks[k] == task for k in pick])
                if len(rows):
                    logits[rows] = self.net(x[rows], mask=self.bank[task])
            used = [{tasks[k]: 1.0} for k in pick]
        else:
            alphas: dict[str, np.ndarray] = {}
            for k, task in enumerate(tasks):
                alphas[task] = alphas.get(task, 0.0) + post[:, k]
            logits = self.net(x, masks=self.bank, alphas={t: torch.as_tensor(a, dtype=torch.float32) for t, a in alphas.items()})
            used = [{t: float(a[i]) for t, a in alphas.items()} for i in range(len(X))]
        return torch.softmax(logits.double(), dim=1).numpy(), used

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
        """
        mode = _check_mode(mode or self.mode)
        mm = self._market(market)
        prices = validate_frame(prices, market)
        if len(prices) < self.min_rows:
            raise DataError(
                f"market {market!r}: got {len(prices)} rows of prices up to "
                f"{prices.index[-1].date()}, need at least min_rows={self.min_rows}"
            )
        window = prices.iloc[-self.min_rows:]
        X = self._inputs(mm, window)[-1:]
        post = mm.regime.predict_next_proba(window.iloc[-self._regime_rows(market):]).to_numpy()[-1:]
        probs, used = self._route(mm, X, post, mode)
        row = self._rows(mm, window.index[-1:], probs, post, used, mode).iloc[0]
        return {
            "market": market, "as_of": str(window.index[-1].date()),
            "target_date": str((window.index[-1] + pd.offsets.BDay(self.horizon)).date()), "horizon": self.horizon,
            "probabilities": {c: float(row[f"p_{c}"]) for c in self.classes},
            "regime": row["regime"],
            "regime_posterior": {r: float(row[f"regime_{r}"]) for r in mm.regime.names_},
            "masks": used[0], "signal": float(row["signal"]), "mode": mode,
        }

    def predict_frame(self, market: str, prices: pd.DataFrame, mode: GateMode | None = None) -> pd.DataFrame:
        """:meth:`predict` for every date that has ``min_rows`` rows of history, in one pass.

        Returns a frame indexed by ``as_of`` with ``p_<class>``, ``signal``, ``regime``,
        ``regime_<name>``, ``masks`` (JSON) and ``mode`` columns.
        """
        mode = _check_mode(mode or self.mode)
        mm = self._market(market)
        prices = validate_frame(prices, market)
        X = self._inputs(mm, prices)
        post = mm.regime.rolling_next_proba(prices, self.regime_window).reindex(prices.index).to_numpy()
        ok = np.arange(len(prices)) >= self.min_rows - 1
        ok &= np.isfinite(X).all(axis=1) & np.isfinite(post).all(axis=1)
        rows = np.flatnonzero(ok)
        probs, used = self._route(mm, X[rows], post[rows], mode)
        return self._rows(mm, prices.index[rows], probs, post[rows], used, mode)

    # -- persistence ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "network": {"sizes": list(self.net.sizes), "seed": self.net.seed, "superfluous": self.net.superfluous,
                        "base_hash": self.net.weights_hash()},
            "features": {"names": list(self.feature_names), "lookback": self.lookback, "horizon": self.horizon},
            "regime_window": self.regime_window, "mode": self.mode, "min_rows": self.min_rows,
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
        )


def _check_mode(mode: str) -> str:
    if mode not in GATE_MODES:
        raise ValueError(f"unknown gate mode {mode!r}; valid: {list(GATE_MODES)}")
    return mode
