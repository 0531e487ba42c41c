"""Seeded Markov-switching price generator with known regimes (for tests, benchmarks, the oracle).

Each market follows its own three-state Markov chain ``z_t`` (sticky transitions, started from the
stationary distribution) or, with ``common_driver=True``, all markets follow one shared chain (a
common regime driver: the same regime path, independent innovations). Daily log returns follow a regime-switching AR(1)::

    r_t = mu[z_t] + phi[z_t] * (r_{t-1} - mu[z_{t-1}]) + sigma[z_t] * eps_t,   eps_t ~ N(0, 1)

and ``close_t = start_price * exp(r_0 + ... + r_t)`` on business days. Regime ``0`` is the calmest;
regimes ascend in volatility. Market ``i`` draws from child ``i`` of ``SeedSequence(seed)``, so the
first market of a multi-market draw equals the single-market draw with the same seed; the common
path draws from ``SeedSequence(seed, spawn_key=(COMMON_KEY,))``, independent of ``n_markets``.

The oracle that knows these parameters is :mod:`supsup_fin.data.oracle`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from supsup_fin.errors import DataError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SyntheticPreset:
    """Parameters of the generator; per-regime tuples are in ascending-volatility order."""

    name: str
    drift: tuple[float, float, float]
    vol: tuple[float, float, float]
    ar: tuple[float, float, float]
    transition: tuple[tuple[float, float, float], ...]
    regime_names: tuple[str, str, str] = ("calm", "normal", "turbulent")
    start_price: float = 100.0

    def __post_init__(self) -> None:
        p = np.asarray(self.transition, dtype=float)
        if p.shape != (3, 3) or not np.allclose(p.sum(axis=1), 1.0) or (p < 0).any():
            raise ValueError(f"preset {self.name!r}: transition must be a 3x3 row-stochastic matrix, got {p.tolist()}")
        if not all(a < b for a, b in zip(self.vol, self.vol[1:])):
            raise ValueError(f"preset {self.name!r}: vol must ascend by regime, got {self.vol}")
        if not all(abs(a) < 1 for a in self.ar):
            raise ValueError(f"preset {self.name!r}: AR coefficients must be in (-1, 1), got {self.ar}")

    def stationary(self) -> np.ndarray:
        """Stationary distribution of the regime chain, shape (3,)."""
        p = np.asarray(self.transition, dtype=float)
        vals, vecs = np.linalg.eig(p.T)
        pi = np.real(vecs[:, int(np.argmin(np.abs(vals - 1.0)))])
        return pi / pi.sum()

    def to_dict(self) -> dict[str, Any]:
        """JSON-able parameters."""
        return {
            "preset": self.name,
            "regimes": list(self.regime_names),
            "transition": [list(map(float, row)) for row in self.transition],
            "drift": list(map(float, self.drift)),
            "vol": list(map(float, self.vol)),
            "ar": list(map(float, self.ar)),
            "start_price": float(self.start_price),
            "returns": "log",
        }


SYNTHETIC_PRESETS: dict[str, SyntheticPreset] = {
    "easy": SyntheticPreset(
        name="easy",
        drift=(6e-4, 1e-4, -1.5e-3),
        vol=(0.006, 0.012, 0.03),
        ar=(0.05, 0.0, -0.1),
        transition=((0.99, 0.008, 0.002), (0.005, 0.99, 0.005), (0.004, 0.016, 0.98)),
    ),
    "hard": SyntheticPreset(
        name="hard",
        drift=(3e-4, 1e-4, -4e-4),
        vol=(0.009, 0.012, 0.016),
        ar=(0.02, 0.0, -0.05),
        transition=((0.95, 0.04, 0.01), (0.03, 0.94, 0.03), (0.02, 0.06, 0.92)),
    ),
}
"""The fixed presets: ``easy`` (well separated, sticky) and ``hard`` (overlapping, less sticky)."""


@dataclass(frozen=True, eq=False)
class SyntheticMarkets:
    """A synthetic draw.

    Attributes
    ----------
    prices : dict[str, DataFrame]
        Market name -> close-only prices frame, shape (n_days, 1), business days.
    regimes : dict[str, Series]
        Market name -> true regime per row (int64, 0 = calmest), same index as its prices.
    params : dict
        JSON-able generator parameters (transition matrix, per-regime drift, vol, AR(1)) and the draw's
        seed, dates and market names.
    """

    prices: dict[str, pd.DataFrame]
    regimes: dict[str, pd.Series]
    params: dict[str, Any]


COMMON_KEY = 2**20
"""Spawn key of the seed sequence of the common regime path (``common_driver=True``)."""


def _chain(preset: SyntheticPreset, u: np.ndarray) -> np.ndarray:
    n = len(u)
    p_cum = np.cumsum(np.asarray(preset.transition, dtype=float), axis=1)
    z = np.empty(n, dtype=np.int64)
    z[0] = min(int(np.searchsorted(np.cumsum(preset.stationary()), u[0], side="right")), 2)
    for t in range(1, n):
        z[t] = min(int(np.searchsorted(p_cum[z[t - 1]], u[t], side="right")), 2)
    return z


def _simulate(preset: SyntheticPreset, n: int, rng: np.random.Generator,
              common: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    mu, sigma, phi = (np.asarray(v, dtype=float) for v in (preset.drift, preset.vol, preset.ar))
    u = rng.random(n)
    eps = rng.standard_normal(n)
    z = _chain(preset, u) if common is None else common
    r = np.empty(n)
    r[0] = mu[z[0]] + sigma[z[0]] * eps[0]
    for t in range(1, n):
        k = z[t]
        r[t] = mu[k] + phi[k] * (r[t - 1] - mu[z[t - 1]]) + sigma[k] * eps[t]
    return z, r


def generate_synthetic(
    preset: str,
    n_markets: int = 1,
    seed: int = 0,
    start: str | pd.Timestamp = "2000-01-03",
    end: str | pd.Timestamp = "2018-12-31",
    common_driver: bool = False,
) -> SyntheticMarkets:
    """Draw ``n_markets`` Markov-switching price series.

    Parameters
    ----------
    preset : str
        A key of :data:`SYNTHETIC_PRESETS` (``easy`` or ``hard``).
    n_markets : int
        Number of markets, named ``f"{preset}_{i}"``.
    seed : int
        Seed of ``numpy.random.SeedSequence``; the same seed gives identical output.
    start, end : str or Timestamp
        First and last calendar date; rows are the business days between them.
    common_driver : bool
        ``False``: independent regime chains per market. ``True``: every market follows one
        shared regime path (a common driver), with its own innovations.

    Returns
    -------
    SyntheticMarkets
        Prices (close only, shape (n_days, 1) each), true regimes and parameters.

    Raises
    ------
    DataError
        Unknown preset (the message lists the valid ones), ``n_markets < 1`` or fewer than 2 days.
    """
    try:
        spec = SYNTHETIC_PRESETS[preset]
    except KeyError:
        raise DataError(f"unknown synthetic preset {preset!r}; valid: {sorted(SYNTHETIC_PRESETS)}") from None
    if n_markets < 1:
        raise DataError(f"n_markets must be >= 1, got {n_markets}")
    dates = pd.bdate_range(pd.Timestamp(start), pd.Timestamp(end), name="date").as_unit("ns")
    if len(dates) < 2:
        raise DataError(f"synthetic range {start}..{end} holds {len(dates)} business day(s); need at least 2")
    prices: dict[str, pd.DataFrame] = {}
    regimes: dict[str, pd.Series] = {}
    common = None
    if common_driver:
        common_rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(COMMON_KEY,)))
        common = _chain(spec, common_rng.random(len(dates)))
    for i, child in enumerate(np.random.SeedSequence(seed).spawn(n_markets)):
        name = f"{preset}_{i}"
        z, r = _simulate(spec, len(dates), np.random.default_rng(child), common)
        prices[name] = pd.DataFrame({"close": spec.start_price * np.exp(np.cumsum(r))}, index=dates)
        regimes[name] = pd.Series(z, index=dates, name="regime")
    params = {**spec.to_dict(), "seed": int(seed), "common_driver": bool(common_driver), "markets": list(prices),
              "start": dates[0].strftime("%Y-%m-%d"), "end": dates[-1].strftime("%Y-%m-%d")}
    logger.debug("generated %d synthetic market(s) from preset %r, seed %d", n_markets, preset, seed)
    return SyntheticMarkets(prices=prices, regimes=regimes, params=params)


@dataclass(frozen=True)
class NewRegime:
    """A regime the presets never produce: one AR(1) setting of daily log returns (``drift``, ``vol``, ``ar``)."""

    drift: float
    vol: float
    ar: float = 0.0
    name: str = "novel"

    def __post_init__(self) -> None:
        if not self.vol > 0 or not abs(self.ar) < 1:
            raise ValueError(f"new regime {self.name!r}: vol must be > 0 and ar in (-1, 1), got vol {self.vol}, ar {self.ar}")


def generate_switching(
    preset: str,
    new: NewRegime,
    switch: str | pd.Timestamp,
    n_markets: int = 1,
    seed: int = 0,
    start: str | pd.Timestamp = "2000-01-03",
    end: str | pd.Timestamp = "2018-12-31",
) -> SyntheticMarkets:
    """Markets that follow ``preset`` until ``switch`` and the unseen regime ``new`` from then on.

    Before the first business day on or after ``switch`` every market's prices are bitwise those
    of :func:`generate_synthetic` with the same arguments; from it on, daily log returns follow
    ``r_t = new.drift + new.ar * (r_{t-1} - m_{t-1}) + new.vol * eps_t`` (``m``: the previous
    row's regime drift), with innovations drawn after the preset's from the same generator. The
    true regime series gives the new regime the index ``3`` (after the preset's three);
    ``params`` adds ``switch`` (the first new-regime date) and ``new_regime``.

    Raises
    ------
    DataError
        As :func:`generate_synthetic`, and when ``switch`` is not inside the date range.
    """
    base = generate_synthetic(preset, n_markets, seed, start, end)
    dates = next(iter(base.prices.values())).index
    at = int(dates.searchsorted(pd.Timestamp(switch)))
    if not 0 < at < len(dates):
        raise DataError(f"switch date {pd.Timestamp(switch).date()} must fall inside {dates[0].date()}.."
                        f"{dates[-1].date()} after its first day")
    spec = SYNTHETIC_PRESETS[preset]
    prices: dict[str, pd.DataFrame] = {}
    regimes: dict[str, pd.Series] = {}
    for child, name in zip(np.random.SeedSequence(seed).spawn(n_markets), base.prices):
        rng = np.random.default_rng(child)
        z, r = _simulate(spec, len(dates), rng)  # the preset's path again, leaving rng past its draws
        eps = rng.standard_normal(len(dates) - at)
        prev, prev_mean = r[at - 1], spec.drift[z[at - 1]]
        for i, t in enumerate(range(at, len(dates))):
            r[t] = prev = new.drift + new.ar * (prev - prev_mean) + new.vol * eps[i]
            prev_mean = new.drift
        prices[name] = pd.DataFrame({"close": spec.start_price * np.exp(np.cumsum(r))}, index=dates)
        regimes[name] = pd.Series(np.where(np.arange(len(dates)) < at, z, 3), index=dates, name="regime")
    params = {**base.params, "switch": dates[at].strftime("%Y-%m-%d"),
              "new_regime": {"name": new.name, "drift": new.drift, "vol": new.vol, "ar": new.ar}}
    return SyntheticMarkets(prices=prices, regimes=regimes, params=params)
