"""A backtest's tearsheet: one self-contained HTML page, the page to open first.

Figures are embedded as PNG data URIs and the page has no scripts and no links out, so it opens
offline, from a folder or from MLflow. It shows: the strategies drawn (:func:`highlighted`: the
gated forecaster, the best baseline, buy and hold, the oracle where present) with their portfolio
scores; their equity and drawdown in each market and the portfolio; their rolling Sharpe ratio;
the comparison table of every strategy per market and for the portfolio; their scores by regime;
calibration (ECE and reliability diagrams); the continual scores, storage and the windows.
"""

from __future__ import annotations

import base64
import html
import io

import pandas as pd
from matplotlib.figure import Figure

from supsup_fin.backtest.plots import calibration_ece, equity_figure, reliability_figure, rolling_sharpe_figure
from supsup_fin.backtest.report import PORTFOLIO, BacktestResult
from supsup_fin.backtest.strategies import SUPSUP, BuyAndHold, Oracle
from supsup_fin.config import Config

ROLLING_DAYS = 63
"""Trading days per rolling Sharpe ratio (a quarter)."""

_HEADLINE = ("sharpe", "sharpe_lo", "sharpe_hi", "dsr", "ann_return", "ann_vol", "max_drawdown", "calmar",
             "accuracy", "log_loss")
_COUNTS = ("days", "n", "count", "tasks", "flat_missing", "bytes", "masks_trained")
"""Columns of counts: shown as integers (a float column where some rows have none)."""

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.5rem auto; max-width: 1250px;
       padding: 0 1rem; color: #1d1d1f; }
h1 { margin-bottom: 0.2rem; }
h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2rem; margin-top: 2rem; }
.meta { color: #555; margin: 0.2rem 0; }
nav a { margin-right: 0.8rem; }
table { border-collapse: collapse; margin: 0.5rem 0 1rem; font-size: 0.85rem; }
th, td { border: 1px solid #ddd; padding: 0.2rem 0.5rem; }
td { text-align: right; font-variant-numeric: tabular-nums; }
thead th { background: #f3f3f3; }
tbody th { text-align: left; font-weight: normal; }
.scroll { overflow-x: auto; }
img { max-width: 100%; height: auto; display: block; margin: 0.5rem 0; }
.note { color: #555; font-size: 0.9rem; }
"""


def gated_strategy(result: BacktestResult, cfg: Config) -> str | None:
    """The gated forecaster to show: the configured gate mode's (``gating.mode``) if the backtest
    ran it, else the first gate mode it ran; None without gated strategies."""
    ran = set(result.table.index.get_level_values("strategy"))
    wanted = [f"{SUPSUP}_{m}" for m in (cfg.gating.mode, *cfg.backtest.modes)]
    return next((s for s in wanted if s in ran), None)


def highlighted(result: BacktestResult, cfg: Config) -> dict[str, str]:
    """The strategies the tearsheet draws: a description of each one's role -> its name.

    The gated forecaster (:func:`gated_strategy`), the baseline with the best Sharpe ratio (the
    portfolio's; a market's mean where there is no portfolio) other than buy and hold and the
    oracle, buy and hold, and the oracle, each if the backtest ran it.
    """
    ran = set(result.table.index.get_level_values("strategy"))
    sharpe = _scores(result.table)[0]["sharpe"]
    baselines = sharpe[[not s.startswith(SUPSUP) and s not in (BuyAndHold.name, Oracle.name) for s in sharpe.index]]
    roles = {
        "gated forecaster": gated_strategy(result, cfg),
        "best baseline by Sharpe": baselines.idxmax() if baselines.notna().any() else None,
        "buy and hold": BuyAndHold.name if BuyAndHold.name in ran else None,
        "oracle (knows the true model)": Oracle.name if Oracle.name in ran else None,
    }
    return {role: name for role, name in roles.items() if name is not None}


def _scores(table: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """Each strategy's scores (strategies x metrics) across markets, and what they are of."""
    if PORTFOLIO in table.index.get_level_values("market"):
        return table.xs(PORTFOLIO, level="market"), "the equal-risk portfolio of every market"
    return table.groupby(level="strategy").mean(numeric_only=True), "the mean over markets (no portfolio)"


def tearsheet_html(result: BacktestResult, cfg: Config) -> str:
    """The tearsheet of a backtest as one HTML document (see the module docstring)."""
    shown = highlighted(result, cfg)
    names = list(dict.fromkeys(shown.values()))
    markets = sorted(result.forecasts.closes)
    panels = ([] if result.portfolio.empty else [PORTFOLIO]) + markets
    sections = [
        ("strategies", "Strategies shown", _headline(result, shown)),
        ("equity", "Equity and drawdown",
         "".join(_img(equity_figure(result, m, names), f"equity and drawdown: {m}") for m in panels)),
        ("rolling-sharpe", f"Rolling {ROLLING_DAYS}-day Sharpe ratio",
         _img(rolling_sharpe_figure(result, names, ROLLING_DAYS), "rolling Sharpe ratio")),
        ("comparison", "Comparison", _comparison(result, panels)),
        ("per-regime", "Per regime", _per_regime(result, names)),
        ("calibration", "Calibration", _calibration(result)),
        ("continual", "Continual learning",
         '<p class="note">Average accuracy on every window\'s days at the end, backward transfer (BWT) and '
         "forgetting across windows.</p>" + _table(result.continual)),
        ("storage", "Storage", _table(result.storage)),
        ("windows", "Windows", _table(result.windows.set_index("window") if not result.windows.empty
                                      else result.windows)),
    ]
    title = f"Backtest {cfg.name}"
    body = "".join(f'<section id="{sid}"><h2>{html.escape(head)}</h2>{content}</section>'
                   for sid, head, content in sections)
    nav = " ".join(f'<a href="#{sid}">{html.escape(head)}</a>' for sid, head, _ in sections)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>\n<body>"
            f"<h1>{html.escape(title)}</h1>{_meta(result, cfg, markets)}<nav>{nav}</nav>\n{body}\n</body></html>\n")


def _meta(result: BacktestResult, cfg: Config, markets: list[str]) -> str:
    bt, w = cfg.backtest, result.windows
    span = (f"{len(w)} {bt.window} windows, {w['test_start'].iloc[0]} to {w['test_end'].iloc[-1]}, "
            f"refit every {bt.retrain_every} trading days") if not w.empty else "no windows"
    lines = [f"markets: {', '.join(markets)}", span,
             f"costs: {bt.cost_bps:g} bps + {bt.slippage_bps:g} bps slippage per unit traded "
             f"(every figure and score is after costs)"]
    return "".join(f'<p class="meta">{html.escape(line)}</p>' for line in lines)


def _headline(result: BacktestResult, shown: dict[str, str]) -> str:
    scores, scope = _scores(result.table)
    rows = pd.DataFrame([{"role": role, "strategy": name, **scores.loc[name, [c for c in _HEADLINE if c in scores]]}
                         for role, name in shown.items()]).set_index(["role", "strategy"])
    return (f'<p class="note">Scores of {scope}; sharpe_lo/hi: 95% bootstrap interval; dsr: deflated Sharpe '
            "ratio over every strategy tried.</p>" + _table(rows))


def _comparison(result: BacktestResult, panels: list[str]) -> str:
    parts = ['<p class="note">Every strategy, best Sharpe ratio first.</p>']
    for market in panels:
        t = result.comparison(market).sort_values("sharpe", ascending=False, na_position="last")
        parts.append(f"<h3>{html.escape(market)}</h3>{_table(t)}")
    return "".join(parts)


def _per_regime(result: BacktestResult, names: list[str]) -> str:
    t = result.per_regime
    if t.empty:
        return '<p class="note">No regime held a position.</p>'
    t = t[t.index.get_level_values("strategy").isin(names)]
    return ('<p class="note">The strategies shown, by the HMM regime behind each held position '
            "(every strategy: per_regime.csv).</p>" + _table(t))


def _calibration(result: BacktestResult) -> str:
    if result.calibration.empty:
        return '<p class="note">No strategy gives class probabilities.</p>'
    ece = calibration_ece(result.calibration).sort_values().to_frame().rename_axis("strategy")
    return ('<p class="note">Classwise expected calibration error (lower is better; markets pooled) and the '
            "reliability diagram of each strategy with probabilities.</p>"
            + _table(ece) + _img(reliability_figure(result.calibration), "reliability diagrams"))


def _table(frame: pd.DataFrame) -> str:
    """``frame`` as an HTML table: 4 decimals, counts as integers, lists and dicts as plain text."""
    if frame.empty:
        return '<p class="note">(empty)</p>'
    frame = frame.map(_plain) if (frame.dtypes == object).any() else frame
    frame = frame.assign(**{c: frame[c].map(lambda v: "" if pd.isna(v) else f"{int(v)}")
                            for c in _COUNTS if c in frame.columns})
    return f'<div class="scroll">{frame.to_html(float_format=lambda x: f"{x:.4f}", na_rep="", border=0)}</div>'


def _plain(v: object) -> object:
    if isinstance(v, dict):
        return ", ".join(f"{k}: {x}" for k, x in v.items())
    if isinstance(v, list | tuple):
        return ", ".join(map(str, v))
    return v


def _img(fig: Figure, alt: str) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'
