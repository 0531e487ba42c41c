"""Content checks of a prices frame, each under a policy from :class:`DataConfig`.

Checks run in this order on the output of the previous one: ``missing``, ``high_low``, ``jump``,
``stale``, ``gap``. Per policy:

- ``error``: raise :class:`DataError` naming market, column, count and first date;
- ``repair``: fix the frame and log counts (``logger.info``);
- ``warn``: log a warning with counts and first date (``logger.warning``), keep the data. The same
  warning (same market, check and finding) is a warning once per process; a repeat, as when a
  flow loads the prices a command loaded before, is logged at ``INFO`` (kept in a log file, off a
  quiet terminal).

The ``jump`` check first refuses absurd closes under every policy: a close more than
``data.jump.absurd`` times (default 20) above or below the previous known close, i.e.
``|log(c_t / c_prev)| > log(absurd)``, is a unit or feed error (a price in cents, a 1e12 tick), never
a market move, whether it comes back the next day, lasts several rows, starts at the last row or
never comes back. The :class:`DataError` names the market, column ``close``, both dates and both
closes. (Daily moves in the bundled histories stay below 1.6x; raise ``absurd`` to accept more.)

Repairs: ``missing`` forward-fills at most ``max_fill`` consecutive rows per column (pandas'
``ffill(limit=...)``: the first ``max_fill`` rows of a longer run are filled) and drops rows still
missing a value (leading ones included); ``high_low`` drops the rows; ``jump`` drops one-day spikes
(a jump followed at once by a jump back) and keeps level shifts with a warning; ``stale`` keeps the
first row of each over-long run of identical closes and drops its repeats; ``gap`` keeps only the
rows from the last long gap on.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from supsup_fin.config import DataConfig
from supsup_fin.data.frame import validate_frame
from supsup_fin.errors import DataError

logger = logging.getLogger(__name__)

CHECKS: tuple[str, ...] = ("missing", "high_low", "jump", "stale", "gap")


@dataclass(frozen=True)
class Finding:
    """One check that found something.

    ``action`` is the policy applied: ``"repair"`` (the frame was fixed) or ``"warn"`` (kept as is);
    ``count`` counts the offending rows (gaps for ``gap``); ``first_date`` is the first one.
    """

    check: str
    count: int
    action: str
    first_date: pd.Timestamp | None
    detail: str

    def to_record(self) -> dict[str, Any]:
        """JSON-able dict; ``first_date`` as ``YYYY-MM-DD``."""
        first = None if self.first_date is None else self.first_date.strftime("%Y-%m-%d")
        return {"check": self.check, "count": self.count, "action": self.action, "first_date": first,
                "detail": self.detail}


@dataclass(frozen=True)
class HealthReport:
    """What :func:`check_health` found and did for one market.

    Every finding was handled by its policy (a check set to ``error`` raises instead of reporting).
    ``clean`` is True when the returned frame has no known fault left: every finding was repaired
    (a finding kept under policy ``warn`` makes it False).
    """

    market: str
    rows_in: int
    rows_out: int
    findings: tuple[Finding, ...] = ()

    @property
    def clean(self) -> bool:
        return all(f.action == "repair" for f in self.findings)

    def find(self, check: str) -> list[Finding]:
        """Findings of one check (empty when it found nothing)."""
        return [f for f in self.findings if f.check == check]

    def to_records(self) -> list[dict[str, Any]]:
        """One JSON-able dict per finding, each with the market name."""
        return [{"market": self.market, **f.to_record()} for f in self.findings]


def _day(ts: pd.Timestamp) -> str:
    return ts.strftime("%Y-%m-%d")


_warned: set[str] = set()
_warned_lock = threading.Lock()


def _warn_once(msg: str) -> None:
    """``msg`` as a warning the first time in this process, at ``INFO`` after that."""
    with _warned_lock:
        first = msg not in _warned
        _warned.add(msg)
    logger.log(logging.WARNING if first else logging.INFO, "%s", msg)


class _Run:
    """Applies policies and collects findings for one market."""

    def __init__(self, market: str) -> None:
        self.market = market
        self.findings: list[Finding] = []

    def found(self, check: str, policy: str, count: int, first: pd.Timestamp, column: str, detail: str) -> None:
        msg = f"market {self.market!r}: check {check!r} on column {column!r}: {detail}; first on {_day(first)}"
        if policy == "error":
            raise DataError(f"{msg} (policy 'error')")
        if policy == "warn":
            _warn_once(f"{msg} (kept, policy 'warn')")
        else:
            logger.info("%s", msg)
        self.findings.append(Finding(check, int(count), policy, first, detail))


def _missing(df: pd.DataFrame, run: _Run, policy: str, max_fill: int) -> pd.DataFrame:
    nan = df.isna()
    rows = nan.any(axis=1).to_numpy()
    if not rows.any():
        return df
    n, first = int(rows.sum()), int(np.flatnonzero(rows)[0])
    col = next(c for c in df.columns if nan[c].iloc[first])  # a column missing on the first bad row
    detail = f"{n} row(s) with missing values in {[c for c in df.columns if nan[c].any()]}"
    if policy != "repair":
        run.found("missing", policy, n, df.index[first], col, detail)
        return df
    filled = df.ffill(limit=max_fill) if max_fill > 0 else df
    left = filled.isna().any(axis=1).to_numpy()
    detail += f": {n - int(left.sum())} forward-filled (max_fill={max_fill}), {int(left.sum())} dropped"
    run.found("missing", policy, n, df.index[first], col, detail)
    return filled.loc[~left]


def _high_low(df: pd.DataFrame, run: _Run, policy: str) -> pd.DataFrame:
    if "high" not in df or "low" not in df:
        return df
    bad = (df["high"] < df["low"]).to_numpy()
    if not bad.any():
        return df
    first = df.index[int(np.flatnonzero(bad)[0])]
    detail = f"{int(bad.sum())} row(s) with high < low" + (", dropped" if policy == "repair" else "")
    run.found("high_low", policy, int(bad.sum()), first, "high", detail)
    return df.loc[~bad] if policy == "repair" else df


def _absurd(df: pd.DataFrame, run: _Run, factor: float) -> None:
    """Raise on the first close more than ``factor`` times away from the last known close before it."""
    close = df["close"]
    prev = close.ffill().shift().to_numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        move = np.abs(np.log(close.to_numpy() / prev))
        bad = move > np.log(factor)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        j = int(np.flatnonzero(close.iloc[:i].notna().to_numpy())[-1])
        run.found("jump", "error", int(bad.sum()), df.index[i], "close",
                  f"{int(bad.sum())} absurd move(s) of more than {factor:g}x, a unit or feed error, never a "
                  f"market move (refused under every policy; data.jump.absurd sets the factor), first from "
                  f"{close.iloc[j]:.6g} on {_day(df.index[j])} to {close.iloc[i]:.6g}")


def _jump(df: pd.DataFrame, run: _Run, policy: str, threshold: float, absurd: float) -> pd.DataFrame:
    _absurd(df, run, absurd)
    close = df["close"].to_numpy()
    ret = np.full(len(close), np.nan)
    ret[1:] = close[1:] / close[:-1] - 1.0
    with np.errstate(invalid="ignore"):
        jump = np.abs(ret) > threshold
    if not jump.any():
        return df
    idx = np.flatnonzero(jump)
    what = f"row(s) with |daily return| > {threshold:g}"
    first = df.index[idx[0]]
    first_detail = f"first {ret[idx[0]]:+.1%}"
    if policy != "repair":
        run.found("jump", policy, len(idx), first, "close", f"{len(idx)} {what}, {first_detail}")
        return df
    nxt = np.append(ret[1:], np.nan)
    with np.errstate(invalid="ignore"):
        spike = jump & (np.abs(nxt) > threshold) & (np.sign(nxt) == -np.sign(ret))
    kept = jump & ~spike & ~np.append(False, spike[:-1])  # the return out of a spike is gone too
    if spike.any():
        s = np.flatnonzero(spike)
        run.found("jump", "repair", len(s), df.index[s[0]], "close",
                  f"{len(s)} one-day spike(s) beyond {threshold:g} dropped")
    if kept.any():
        k = np.flatnonzero(kept)
        run.found("jump", "warn", len(k), df.index[k[0]], "close",
                  f"{len(k)} {what} are level shifts, not spikes: kept; first return {ret[k[0]]:+.1%}")
    return df.loc[~spike]


def _stale(df: pd.DataFrame, run: _Run, policy: str, max_repeats: int) -> pd.DataFrame:
    close = df["close"]
    run_id = (close != close.shift()).cumsum().to_numpy()
    length = pd.Series(run_id).map(pd.Series(run_id).value_counts()).to_numpy()
    flagged = length > max_repeats
    if not flagged.any():
        return df
    repeat = flagged & np.append(False, run_id[1:] == run_id[:-1])
    n_runs = len(np.unique(run_id[flagged]))
    first = df.index[int(np.flatnonzero(flagged)[0])]
    detail = (f"{n_runs} run(s) of more than {max_repeats} identical closes (longest {int(length.max())}); "
              f"{int(repeat.sum())} repeated row(s)" + (" dropped" if policy == "repair" else ""))
    run.found("stale", policy, int(repeat.sum()), first, "close", detail)
    return df.loc[~repeat] if policy == "repair" else df


def _gap(df: pd.DataFrame, run: _Run, policy: str, max_days: int) -> pd.DataFrame:
    days = np.diff(df.index.asi8) // (86_400 * 10**9)
    gaps = np.flatnonzero(days > max_days) + 1  # row after each gap
    if not gaps.size:
        return df
    longest = int(days.max())
    detail = f"{gaps.size} gap(s) over {max_days} calendar days (longest {longest})"
    if policy == "repair":
        detail += f"; kept rows from {_day(df.index[gaps[-1]])} on, {int(gaps[-1])} earlier row(s) dropped"
    run.found("gap", policy, int(gaps.size), df.index[gaps[0]], "date", detail)
    return df.iloc[gaps[-1]:] if policy == "repair" else df


def check_health(df: pd.DataFrame, market: str, data: DataConfig) -> tuple[pd.DataFrame, HealthReport]:
    """Run the content checks on a prices frame under the policies in ``data``.

    Parameters
    ----------
    df : DataFrame, shape (n_rows, k)
        A prices frame; it is first put through :func:`validate_frame`.
    market : str
        Market name, used in messages and the report.
    data : DataConfig
        Check policies and thresholds.

    Returns
    -------
    frame : DataFrame, shape (n_kept, k)
        The repaired frame (a new object; the input is not modified).
    report : HealthReport
        The findings, in check order.

    Raises
    ------
    DataError
        A structural fault, a check whose policy is ``error`` found something, or repairs left no rows.
    """
    frame = validate_frame(df, market)
    rows_in = len(frame)
    run = _Run(market)
    frame = _missing(frame, run, data.missing.policy, data.missing.max_fill)
    frame = _high_low(frame, run, data.high_low.policy)
    frame = _jump(frame, run, data.jump.policy, data.jump.threshold, data.jump.absurd)
    frame = _stale(frame, run, data.stale.policy, data.stale.max_repeats)
    frame = _gap(frame, run, data.gap.policy, data.gap.max_days)
    if len(frame) == 0:
        raise DataError(f"market {market!r}: no rows left in column 'close' after repairs of {rows_in} rows")
    return frame.copy(), HealthReport(market, rows_in, len(frame), tuple(run.findings))
