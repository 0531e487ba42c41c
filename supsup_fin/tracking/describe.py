"""What a person reads in the MLflow UI: the prices a run used, as datasets, and short markdown
descriptions of a retrain run, of the version it registered and of the registered model.

A market's prices become a run input (:func:`log_prices`): MLflow stores the dataset's name (the
market), digest (the data hash), source (the Yahoo quote page, the bundled dataset's folder, the
file or the download cache), schema and profile (rows, first and last date); not the rows.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
from collections.abc import Iterable, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any
from urllib.parse import quote

import mlflow
import pandas as pd
from mlflow.data.dataset_source import DatasetSource
from mlflow.data.dataset_source_registry import get_dataset_source_from_json
from mlflow.data.http_dataset_source import HTTPDatasetSource
from mlflow.data.pandas_dataset import PandasDataset
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient
from mlflow.types import ColSpec, Schema
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE

from supsup_fin.config import MarketConfig
from supsup_fin.data import LoadedPrices
from supsup_fin.data._cache import cache_paths
from supsup_fin.forecaster.evaluate import Evaluation
from supsup_fin.tracking.registry import (
    BLOCKED,
    CHAMPION,
    HIGHER_IS_BETTER,
    Decision,
    champion_history,
    champion_version,
)
from supsup_fin.tracking.store import CODE_TAG

NOTE_TAG = MLFLOW_RUN_NOTE
"""Run tag the MLflow UI shows, rendered as markdown, as the run's description."""

MAX_DESCRIPTION = 5000
"""Characters a registered version's description holds in MLflow's database."""

DIGEST_CHARS = 36
"""MLflow keeps at most 36 characters of a dataset digest: the data hash's first 36."""

MARKET_NAMES = 20
"""Market names a description or tag lists before it counts the rest (a registry tag holds 100,000
characters and a description 5,000: not the names of ten thousand markets)."""

MODEL_SUMMARY = (
    "Regime-gated supermask forecaster (supsup-fin): per market, an HMM's regime posterior gates "
    "binary supermasks over one frozen random network, each trained for one regime (Supermasks in "
    "Superposition). It gives the probability of each direction of the market's next return over the "
    "configured horizon, calibrated and scored against the class prior (knowing nothing). "
    "`supsup-fin forecast` and `supsup-fin serve` use `models:/{name}@champion`."
)


class PricesDataset(PandasDataset):
    """A market's prices frame as an MLflow dataset; its profile adds the first and last date."""

    @cached_property
    def schema(self) -> Schema:
        """MLflow's schema of the frame: each column's type, required when it has a value on every
        row (counted by pandas at once; MLflow's own inference tests each value, 3 ms a market)."""
        columns = infer_signature(self.df.iloc[:0]).inputs.inputs
        return Schema([ColSpec(type=c.type, name=c.name, required=bool(self.df[c.name].notna().all()))
                       for c in columns])

    @property
    def profile(self) -> dict[str, Any]:
        idx = self.df.index
        dates = {"first_date": str(idx[0].date()), "last_date": str(idx[-1].date())} if len(idx) else {}
        return {**super().profile, **dates}


def _local(path: str | Path) -> DatasetSource:
    return get_dataset_source_from_json(json.dumps({"uri": str(path)}), source_type="local")


def price_source(market: MarketConfig, lp: LoadedPrices, cache_dir: Path) -> DatasetSource:
    """Where ``lp``'s prices came from: the Yahoo quote page of the ticker, the download cache
    (served when the download failed), the bundled dataset's folder, the file, or the generator."""
    if lp.source == "yahoo":
        return HTTPDatasetSource(f"https://finance.yahoo.com/quote/{quote(str(market.ticker), safe='')}")
    if lp.source == "yahoo-cache":
        return _local(cache_paths(cache_dir, str(market.ticker))[0])
    if lp.source == "bundled":
        spec = importlib.util.find_spec(f"arch.data.{market.dataset}")
        return _local(Path(spec.origin).parent if spec and spec.origin else f"arch.data.{market.dataset}")
    if lp.source == "file":
        return _local(Path(str(market.path)).resolve())
    return _local(f"synthetic:{market.dataset}?seed={market.seed}")


def log_prices(loaded: dict[str, LoadedPrices], markets: Sequence[MarketConfig], cache_dir: Path,
               context: str) -> None:
    """Log each market's prices as an input of the active run (``context``: ``training``,
    ``backtest``...), with input tags naming the source kind and the full data hash."""
    by_name = {m.name: m for m in markets}
    datasets, tags = [], []
    for name, lp in sorted(loaded.items()):
        datasets.append(PricesDataset(lp.frame, price_source(by_name[name], lp, cache_dir), name=name,
                                      digest=lp.data_hash[:DIGEST_CHARS]))
        tags.append({"source": lp.source, "data_hash": lp.data_hash, "stale_days": str(lp.stale_days)})
    mlflow.log_inputs(datasets=datasets, contexts=[context] * len(datasets), tags_list=tags)


def changed_inputs(client: MlflowClient, name: str, data_hashes: dict[str, str], params: dict[str, str],
                   code: str, ignored: tuple[str, ...] = ()) -> list[str]:
    """What differs between these inputs and those of the run that made ``name``'s champion:
    ``data (sp500)``, ``config (training.steps)``, ``code``; empty without a readable champion.
    ``params``: the config as logged, without the keys starting with one of ``ignored``."""
    champ = champion_version(client, name)
    try:
        run = client.get_run(client.get_model_version(name, str(champ)).run_id) if champ is not None else None
    except MlflowException:
        run = None
    if run is None:
        return []
    tags, old = run.data.tags, {k: v for k, v in run.data.params.items() if not k.startswith(ignored)}
    logged = {k.removeprefix("data.").removesuffix(".hash") for k in tags
              if k.startswith("data.") and k.endswith(".hash")}
    data = sorted(m for m in data_hashes.keys() | logged if tags.get(f"data.{m}.hash") != data_hashes.get(m))
    config = sorted(k for k in params.keys() | old.keys() if params.get(k) != old.get(k))
    out = [f"data ({', '.join(data)})"] if data else []
    if config:
        out.append(f"config ({', '.join(config[:5])}{', ...' if len(config) > 5 else ''})")
    if tags.get(CODE_TAG) != code:
        out.append("code")
    return out


def market_names(names: Iterable[str], sep: str = ", ", shown: int = MARKET_NAMES) -> str:
    """``names`` sorted and joined by ``sep``: the first ``shown``, then ``and <n> more``."""
    names = sorted(names)
    return sep.join(names[:shown] + ([f"and {len(names) - shown} more"] if len(names) > shown else []))


def _number(v: float) -> str:
    return "n/a" if pd.isna(v) else f"{v:.4f}"


def scores_table(evaluation: Evaluation, metric: str, mode: str) -> str:
    """Markdown table: per market, the gate mode and ``metric`` on valid and test against the class prior."""
    m = evaluation.markets[evaluation.markets["mode"] == mode]
    lines = [f"| market | gate mode | valid {metric} | class prior | test {metric} | class prior |",
             "|---|---|---|---|---|---|"]
    for market, rows in m.groupby("market", sort=True):
        seg = {r["segment"]: r for r in rows.to_dict("records")}
        valid, test = seg.get("valid", {}), seg.get("test", {})
        runs = next((r["runs"] for r in (valid, test) if r), mode)
        cells = [_number(r.get(k, float("nan"))) for r in (valid, test) for k in (metric, f"baseline_{metric}")]
        lines.append(f"| {market} | {mode if runs == mode else f'{mode}: {runs}'} | {' | '.join(cells)} |")
    return "\n".join(lines)


def _better(metric: str) -> str:
    return "higher is better" if HIGHER_IS_BETTER[metric] else "lower is better"


def decision_line(decision: Decision, unchanged_since: int | None = None) -> str:
    """One sentence: what the registry did with a retrain. Plain text, so that the versions table of
    the model's page, which shows a description's first characters unrendered, reads it too."""
    d = decision
    if unchanged_since is not None:
        return (f"Unchanged since v{unchanged_since}: the same data, config and code as champion "
                f"v{unchanged_since}; nothing registered (`retrain --force` registers anyway).")
    if d.promoted:
        return f"Promoted: v{d.version} is the champion; {d.reason}."
    if d.blocked_by and d.reason.startswith(BLOCKED):
        kept = f"kept v{d.champion_version}" if d.champion_version is not None else "no champion"
        return (f"Registered v{d.version}, blocked ({kept}) by {d.blocked_by}; "
                "`retrain --force` promotes despite it.")
    if d.champion_version is not None:
        return f"Registered v{d.version}, kept v{d.champion_version} as champion: {d.reason}."
    return f"Registered v{d.version}, not promoted (no champion): {d.reason}."


def retrain_description(
    loaded: dict[str, LoadedPrices], evaluation: Evaluation, decision: Decision, *, mode: str, horizon: int,
    classes: Sequence[str], unchanged_since: int | None = None, changes: Sequence[str] = (),
) -> str:
    """Markdown for a retrain run and the version it registered, first what a collapsed view shows:
    the decision, the validation score against the class prior, the markets and their prices;
    then the per-market scores and what changed since the champion."""
    d = decision
    start = min(lp.frame.index[0] for lp in loaded.values()).date()
    end = max(lp.as_of for lp in loaded.values()).date()
    table = scores_table(evaluation, d.metric, mode)
    parts = [
        decision_line(d, unchanged_since),
        f"Valid {d.metric} **{_number(d.score)}** against the class prior's {_number(d.baseline_score)} "
        f"(mean over markets, {_better(d.metric)}).",
        f"Markets **{market_names(loaded)}**, prices {start} .. {end}; the model forecasts the direction "
        f"({' / '.join(classes)}) of each market's next {horizon}-day return.",
        table,
    ]
    if changes and d.champion_version is not None and unchanged_since is None:
        parts.append(f"Changed since champion v{d.champion_version}: {'; '.join(changes)}.")
    text = "\n\n".join(parts)
    if len(text) > MAX_DESCRIPTION:  # many markets: the table gives way to the file that holds it
        text = text.replace(table, "Per-market scores: `report/eval_markets.csv`.")
    return text[:MAX_DESCRIPTION]


def describe_model(client: MlflowClient, name: str, change: str) -> str:
    """Write the registered model's description: what it is, its champion with that version's
    validation score and data, the champions so far, and ``change`` (what just happened).
    Call it after every move of the champion alias. Returns the description."""
    champ = champion_version(client, name)
    parts = [MODEL_SUMMARY.format(name=name)]
    if champ is None:
        parts.append("**No champion yet**: no version has been promoted (each version's description says why).")
    else:
        t = client.get_model_version(name, str(champ)).tags
        metric = t.get("valid_metric", "")
        score = "no recorded score"
        if metric in HIGHER_IS_BETTER and "valid_score" in t and "valid_baseline" in t:
            score = (f"valid {metric} **{_number(float(t['valid_score']))}** against the class prior's "
                     f"{_number(float(t['valid_baseline']))} ({_better(metric)})")
        markets = t.get("markets", "?").replace(",", ", ")
        parts.append(f"**Champion: v{champ}** (`models:/{name}@{CHAMPION}`): {score}; markets {markets}; "
                     f"prices {t.get('data_start', '?')} .. {t.get('data_end', '?')}.")
        history = champion_history(client, name)
        if len(history) > 1:
            parts.append("Champions so far: " + " → ".join(f"v{v}" for v in history) + ".")
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    parts.append(f"Last change ({stamp}): {change}.")
    text = "\n\n".join(parts)
    client.update_registered_model(name, description=text)
    return text
