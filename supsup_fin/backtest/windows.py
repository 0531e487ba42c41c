"""Walk-forward windows: when to refit, what each fit may see, and which days it then trades.

Refit dates (``as_of``) fall every ``retrain_every`` trading days of the markets' common
calendar (the union of their dates), the first one on the last date before ``start``. A fit
at ``as_of`` sees prices up to and including ``as_of`` only; it trades the days after
``as_of`` up to the next refit. Within what it sees, training targets end ``purge`` rows
(default ``horizon + lookback``) before ``as_of``: a training row t needs its target date
t + horizon at or before the train segment's end, which lies ``lookback`` rows before
``as_of``.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import pandas as pd

from supsup_fin.config import Config, SegmentsConfig
from supsup_fin.errors import ConfigError, DataError


@dataclass(frozen=True)
class Window:
    """One refit: data up to ``as_of``; trades ``(as_of, test_end]``."""

    index: int
    as_of: pd.Timestamp
    test_start: pd.Timestamp
    test_end: pd.Timestamp

    @property
    def tag(self) -> str:
        """``YYYY-MM-DD`` of ``as_of``: the suffix of the window's task names."""
        return str(self.as_of.date())


def make_windows(calendar: pd.DatetimeIndex, cfg: Config) -> list[Window]:
    """The walk-forward windows over ``calendar`` (sorted, unique dates of all markets)."""
    bt = cfg.backtest
    start = pd.Timestamp(bt.start or cfg.segments.valid[0])
    end = pd.Timestamp(bt.end) if bt.end else calendar[-1]
    first = calendar.searchsorted(start)  # first test day
    if first == 0 or first >= len(calendar) or calendar[first] > end:
        raise ConfigError(
            f"backtest.start {start.date()} (to end {end.date()}) leaves no history before it or no "
            f"test days in the data's calendar {calendar[0].date()}..{calendar[-1].date()}")
    last = calendar.searchsorted(end, side="right") - 1
    cuts = list(range(first - 1, last, bt.retrain_every))
    if len(cuts) > 1 and last - cuts[-1] < max(bt.retrain_every // 4, 1):
        cuts.pop()  # a last window of a few days is traded by the one before it instead
    out = []
    for i, cut in enumerate(cuts):
        stop = min(cut + bt.retrain_every, last)
        out.append(Window(i, calendar[cut], calendar[cut + 1], calendar[stop]))
    return out


def purge_rows(cfg: Config) -> int:
    """Rows between the last training row and ``as_of``: ``backtest.purge`` or horizon + lookback."""
    p = cfg.backtest.purge
    return cfg.features.horizon + cfg.features.lookback if p is None else p


def fit_view(prices: pd.DataFrame, window: Window, cfg: Config, market: str) -> tuple[pd.DataFrame, SegmentsConfig]:
    """What a window's fit may see of one market, and its segments.

    Returns the prices up to ``as_of`` (the last ``train_rows`` of them for a rolling window)
    and segments whose ``train`` ends ``purge - horizon`` rows before ``as_of`` (so the last
    training target is due that day), ``valid`` spans the rest up to ``as_of`` and ``test``
    starts after it.
    """
    seen = prices.loc[: window.as_of]
    if cfg.backtest.window == "rolling":
        seen = seen.iloc[-int(cfg.backtest.train_rows or 0):]
    gap = max(purge_rows(cfg) - cfg.features.horizon, 1)
    if len(seen) <= gap + cfg.features.horizon + 1:
        raise DataError(
            f"market {market!r}: {len(seen)} rows up to {window.as_of.date()} for window {window.index}, "
            f"need more than {gap + cfg.features.horizon + 1} (purge {purge_rows(cfg)})")
    train_end = seen.index[-1 - gap].date()
    valid_start = seen.index[-gap].date()
    segments = SegmentsConfig(
        train=(seen.index[0].date(), train_end), valid=(valid_start, window.as_of.date()),
        test=(window.as_of.date() + dt.timedelta(days=1), None),
    )
    return seen, segments
