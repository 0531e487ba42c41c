"""The one typed configuration tree, loaded from YAML once at an entry point and passed down.

Every key has a default, so a file that lists only ``markets`` is valid. Unknown keys are
rejected with their full path (``markets.0.tickr``), never silently ignored.

It runs past 400 lines on purpose: every section, with its defaults and one-line descriptions,
is in this one file, so the whole tree a user can write reads top to bottom in one place.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from supsup_fin.errors import ConfigError
from supsup_fin.gate_modes import GateChoice

Policy = Literal["error", "repair", "warn"]
Seed = Annotated[int, Field(ge=0)]
Size = Annotated[int, Field(ge=1)]


def _known_zone(v: str | None) -> str | None:
    """``v`` when it is an IANA time zone name (or ``None``); a ``ValueError`` otherwise."""
    if v is not None:
        try:
            ZoneInfo(v)
        except (ValueError, OSError, ZoneInfoNotFoundError):  # the last is a KeyError
            raise ValueError(f"unknown IANA time zone {v!r} "
                             "(e.g. America/New_York, Europe/Berlin, Asia/Tokyo)") from None
    return v


def _known_device(v: str) -> str:
    """``v`` when it names a device ``runtime.device`` accepts; a ``ValueError`` otherwise."""
    if not re.fullmatch(DEVICE_PATTERN, v):
        raise ValueError(f"expected auto, cpu, cuda or cuda:N, got {v!r}")
    return v


DEVICE_PATTERN = r"auto|cpu|cuda(?::(\d+))?"
"""The values ``runtime.device`` accepts."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class MarketConfig(_Section):
    """One market: where its prices come from.

    ``source`` picks which of ``ticker`` (yahoo), ``dataset`` (bundled: ``sp500``, ``nasdaq``,
    ``wti``; synthetic: a preset, ``easy`` or ``hard``) or ``path`` (file) is required.
    ``timezone`` (an IANA name) is the exchange's zone: tz-aware timestamps in a file are converted
    to it before their calendar date is taken (see :func:`supsup_fin.data.validate_frame`); Yahoo's
    dates are already the exchange's own. ``close`` (file only) picks a file's close column:
    ``close`` as written, or ``adj_close`` (``Adj Close``), with ``open high low`` scaled to it.
    """

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.\-]+$")]
    source: Literal["yahoo", "bundled", "synthetic", "file"]
    ticker: str | None = None
    dataset: str | None = None
    path: str | None = None
    asset_class: str = "unknown"
    seed: Seed = 0  # synthetic source only: the market's generator seed
    timezone: str | None = Field(None, description="the exchange's IANA time zone (Europe/Berlin...): tz-aware "
                                 "timestamps are converted to it before their date is taken (None: each keeps its own)")
    close: Literal["close", "adj_close"] = Field(
        "close", description="file source only: the close column used, 'close' as written or 'adj_close' (a Yahoo "
        "download's 'Adj Close': open, high and low are then scaled by adj_close / close on each row)")

    _zone = field_validator("timezone")(_known_zone)

    @model_validator(mode="after")
    def _locator_matches_source(self) -> MarketConfig:
        needed = {"yahoo": "ticker", "bundled": "dataset", "synthetic": "dataset", "file": "path"}
        key = needed[self.source]
        if getattr(self, key) is None:
            raise ValueError(f"market {self.name!r} has source {self.source!r} and needs {key!r}")
        if self.close != "close" and self.source != "file":
            raise ValueError(f"market {self.name!r}: close: {self.close} applies to source 'file' only; source "
                             f"{self.source!r} has one close (Yahoo's and the bundled series are adjusted)")
        return self


DateRange = tuple[dt.date | None, dt.date | None]


class SegmentsConfig(_Section):
    """Date segments (inclusive). ``None`` as a start or end means the data's own edge."""

    train: DateRange = (None, dt.date(2012, 12, 31))
    valid: DateRange = (dt.date(2013, 1, 1), dt.date(2015, 12, 31))
    test: DateRange = (dt.date(2016, 1, 1), None)

    @model_validator(mode="after")
    def _ordered(self) -> SegmentsConfig:
        order = [("train", self.train), ("valid", self.valid), ("test", self.test)]
        for name, (start, end) in order:
            if start is not None and end is not None and start > end:
                raise ValueError(f"segment {name!r} starts {start} after it ends {end}")
        for (n1, (_, end1)), (n2, (start2, _)) in zip(order, order[1:]):
            if end1 is None or start2 is None:
                raise ValueError(f"segments {n1!r} and {n2!r} need an end and a start between them")
            if start2 <= end1:
                raise ValueError(f"segment {n2!r} starts {start2}, not after {n1!r} ends {end1}")
        return self


class CheckPolicy(_Section):
    policy: Policy = "warn"


class MissingCheck(_Section):
    policy: Policy = "repair"
    max_fill: int = Field(5, ge=0, description="forward-fill at most this many consecutive rows")


class JumpCheck(_Section):
    """Large daily moves of ``close``: ``threshold`` (a simple return) flags them under ``policy``;
    ``absurd`` (a factor: ``|log(c_t / c_prev)| > log(absurd)``) refuses them under every policy."""

    policy: Policy = "warn"
    threshold: float = Field(0.25, gt=0, description="absolute daily simple return")
    absurd: float = Field(20.0, gt=1, description="a close more than this factor above or below the previous "
                          "close is a data error (a unit or feed fault, never a market move): an error under "
                          "every policy")


class StaleCheck(_Section):
    policy: Policy = "warn"
    max_repeats: int = Field(5, ge=1, description="identical consecutive closes tolerated")


class GapCheck(_Section):
    policy: Policy = "warn"
    max_days: int = Field(10, ge=1, description="calendar days between rows tolerated")


class HighLowCheck(_Section):
    policy: Policy = "repair"  # repair = drop the row


class YahooConfig(_Section):
    start: dt.date = dt.date(2000, 1, 1)
    retries: int = Field(3, ge=0)
    backoff_s: float = Field(1.0, ge=0)
    overlap_days: int = Field(10, ge=1)
    timeout_s: float = Field(30.0, gt=0)
    stale_warn_days: int = Field(5, ge=0, description="warn when the latest row is older than this many calendar days")


class DataConfig(_Section):
    missing: MissingCheck = MissingCheck()
    jump: JumpCheck = JumpCheck()
    stale: StaleCheck = StaleCheck()
    gap: GapCheck = GapCheck()
    high_low: HighLowCheck = HighLowCheck()
    yahoo: YahooConfig = YahooConfig()


class FeaturesConfig(_Section):
    names: Annotated[tuple[str, ...], Field(min_length=1)] = (
        "ret_1", "ret_5", "ret_20", "vol_5", "vol_20", "ma_gap_20", "drawdown_60", "vol_ratio")
    lookback: int = Field(8, ge=1)
    horizon: int = Field(5, ge=1)
    n_classes: Literal[2, 3] = 3


class RegimesConfig(_Section):
    n_states: int | tuple[int, int] = 3
    n_restarts: int = Field(3, ge=1, le=20, description="EM restarts per state count (bounds the search)")
    n_iter: int = Field(200, ge=1)
    covariance_type: Literal["full", "diag"] = "full"
    vol_window: int = Field(10, ge=2)
    regime_window: int = Field(250, ge=10, description="price rows the HMM filter runs over before it answers "
                               "(a forecast's regime posterior uses only these; formerly `warmup`)")
    random_state: Seed = 0
    selection: Literal["bic_returns", "bic_features"] = Field(
        "bic_returns", description="state-count criterion for a range: BIC of a returns-only HMM (works) "
        "or of the two-feature HMM (over-selects: overlapping vol windows)")
    observations: Literal["return_vol", "return"] = Field(
        "return_vol", description="HMM observations: (log return, log realised vol) or log return only")
    sticky: float = Field(
        0.0, ge=0, description="pseudo-counts added to each regime's self-transition in EM (a Dirichlet "
        "prior that favours persistent regimes; 0: maximum likelihood)")
    @model_validator(mode="before")
    @classmethod
    def _old_window_name(cls, data: Any) -> Any:
        """Configs written before the rename say ``warmup``; it still loads (not both)."""
        if isinstance(data, dict) and "warmup" in data:
            if "regime_window" in data:
                raise ValueError("give regimes.regime_window or its old name regimes.warmup, not both")
            data = {**data, "regime_window": data["warmup"]}
            del data["warmup"]
        return data

    lineage: bool = Field(
        True, description="retrain: align each market's refit to the champion's HMM (its state count and "
        "regime names are kept, so a regime means the same across versions); false: a fresh state search")
    order_by: Literal["volatility", "mean"] = Field(
        "volatility", description="regime order and names: ascending volatility (calm / normal / turbulent) "
        "or ascending mean return (bear / sideways / bull)")

    @field_validator("n_states")
    @classmethod
    def _states(cls, v: int | tuple[int, int]) -> int | tuple[int, int]:
        lo, hi = (v, v) if isinstance(v, int) else v
        if not 2 <= lo <= hi <= 8:
            raise ValueError(f"n_states must be an int or a (lo, hi) range within 2..8, got {v}")
        return v


class NetworkConfig(_Section):
    hidden: tuple[Size, ...] = (256, 256)
    seed: Seed = 0


class MasksConfig(_Section):
    method: Literal["edge_popup", "threshold", "hard_concrete"] = "edge_popup"
    density: float = Field(0.5, gt=0, le=1)
    erdos_renyi: bool = Field(False, description="edge_popup: Erdős–Rényi per-layer budget (same overall density)")
    init_scale: float | None = Field(
        None, gt=0, le=10, description="edge_popup: initial scores uniform in ± init_scale / sqrt(fan_in). Near zero "
        "(0.01, the library's default) the first gradients decide the selection: several times faster to a given "
        "accuracy, and a lower held-out log-loss on the demo's tasks; but every mask then makes "
        "the same choice for superfluous outputs (task inference by them fails), and the pipeline's novelty and "
        "calibration checks have not been re-validated at 0.01. None: the reference's Kaiming-uniform scores (1)")
    tau: float = Field(2.0 / 3.0, gt=0, description="hard_concrete: initial Gumbel-sigmoid temperature")
    tau_final: float | None = Field(None, gt=0, description="hard_concrete: final temperature (None: no annealing)")
    l0_lambda: float = Field(0.0, ge=0, description="hard_concrete: weight of the expected-L0 penalty λ·Σp")
    init_p: float | None = Field(None, gt=0, lt=1, description="hard_concrete: initial keep probability (None: density)")
    store_probabilities: bool = Field(False, description="hard_concrete: keep p as uint8 beside the bits")
    stochastic_samples: int = Field(16, ge=1, description="hard_concrete: masks averaged by stochastic inference")
    inference: Literal["deterministic", "stochastic"] = Field(
        "deterministic", description="forecasts from each mask's bits, or (hard_concrete with store_probabilities) "
        "the mean over stochastic_samples masks sampled from its keep probabilities, in every gate mode")
    superfluous: int = Field(
        0, ge=0, description="extra output units of the frozen net (SupSup's remedy for few classes): training "
        "pushes them down on each task's own mask, which is what lets task inference (gate mode infer) find it; "
        "they cost forecast calibration (the small pipeline's test log-loss 1.22 with 20 vs below the prior with 0)")

    @model_validator(mode="after")
    def _stochastic_needs_probabilities(self) -> MasksConfig:
        if self.inference == "stochastic" and not (self.method == "hard_concrete" and self.store_probabilities):
            raise ValueError("masks.inference 'stochastic' samples masks from keep probabilities: it needs "
                             f"method hard_concrete and store_probabilities true (got method {self.method!r}, "
                             f"store_probabilities {self.store_probabilities})")
        return self

    def form_options(self) -> dict[str, Any]:
        """Options of the chosen form, as ``train_masks(form_options=...)`` takes them."""
        if self.method == "edge_popup":
            return {"erdos_renyi": self.erdos_renyi, "init_scale": 1.0 if self.init_scale is None else self.init_scale}
        if self.method == "hard_concrete":
            return {"tau": self.tau, "tau_final": self.tau_final, "l0_lambda": self.l0_lambda, "init_p": self.init_p}
        return {}


class TrainingConfig(_Section):
    steps: int = Field(300, ge=1)
    batch_size: int = Field(256, ge=1)
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(1e-4, ge=0)
    min_task_rows: int = Field(60, ge=1, description="fewer training rows: no regime mask (ALL is used)")
    seed: Seed = 0
    holdout_fraction: float = Field(
        0.2, ge=0, lt=0.5, description="the last part of each market's training rows held out (after a purge of "
        "horizon + lookback rows) to choose each mask's step budget, its calibration map and the gate mode; "
        "0: no selection slice (fixed steps, uncalibrated, the configured gate mode)")
    checkpoints: tuple[Size, ...] | None = Field(
        None, description="steps at which each task's held-out log-loss is scored (None: 1/30, 1/15, 1/10, 1/6, "
        "1/4, 1/3, 1/2, 2/3 and all of training.steps)")
    patience: int = Field(3, ge=1, description="checkpoints without held-out improvement before a task's choice is final")
    compute_dtype: Literal["float32", "bfloat16"] = Field(
        "float32", description="dtype of the mask trainer's GEMMs (scores, optimiser, held-out choice and forecasts stay "
        "float32); bfloat16 is faster on CPUs with native bf16 (AVX512-BF16, AMX) and trains different bits")


class GatingConfig(_Section):
    mode: GateChoice = Field("auto", description="hard | soft | ensemble | infer | market, or auto: each market's "
                             "mode chosen by held-out log-loss (market unless another beats it by > 2 s.e.)")
    infer_window: int = Field(16, ge=1, description="rows up to t whose SupSup task-inference scores the `infer` mode averages")


class PositionsConfig(_Section):
    """How a forecast becomes a position at the close of t (see :mod:`supsup_fin.decision`)."""

    rule: Literal["kelly", "sign", "proportional"] = Field(
        "kelly", description="kelly: kelly_fraction x expected return / predicted variance of the forward return "
        "(from the class probabilities and each class's mean return on training rows), capped by cap and "
        "target_vol; sign: full long/short when |p_up - p_down| > threshold, else flat; "
        "proportional: clip((p_up - p_down) / scale, -1, 1) beyond the threshold")
    kelly_fraction: float = Field(0.5, gt=0, le=1, description="kelly: the fraction of the growth-optimal position")
    cap: float = Field(1.0, gt=0, le=5, description="kelly: the largest |position| in units of notional")
    target_vol: float | None = Field(
        0.15, gt=0, description="kelly: the largest position whose predicted annualised volatility is this (None: cap only)")
    threshold: float = Field(0.05, ge=0, lt=1, description="|signal| at or below this: flat")
    allow_short: bool = Field(True, description="False: negative positions become flat")
    scale: float = Field(0.5, gt=0, le=2, description="proportional: the signal that earns a full position")


BASELINES: tuple[str, ...] = ("buy_and_hold", "hmm_rule", "class_prior", "logistic", "dense", "dense_finetune",
                               "dense_regime", "oracle")


class BacktestConfig(_Section):
    """Walk-forward backtest: windows, retraining cadence, execution costs, strategies compared."""

    start: dt.date | None = Field(None, description="first test date (None: the valid segment's start)")
    end: dt.date | None = Field(None, description="last test date (None: the data's end)")
    window: Literal["expanding", "rolling"] = "expanding"
    train_rows: int | None = Field(None, ge=100, description="rolling: training rows per window (required)")
    retrain_every: int = Field(60, ge=1, description="trading days between refits (252: yearly)")
    purge: int | None = Field(None, ge=0, description="rows between train targets and test (None: horizon + lookback)")
    cost_bps: float = Field(1.0, ge=0, description="proportional cost per unit of |Δposition|")
    slippage_bps: float = Field(1.0, ge=0, description="slippage per unit of |Δposition|, added to costs")
    positions: PositionsConfig = PositionsConfig()
    vol_window: int = Field(60, ge=5, description="equal-risk portfolio: trailing days of each market's volatility")
    modes: tuple[GateChoice, ...] = Field(
        ("auto", "hard", "soft", "ensemble", "infer", "market"), min_length=1,
        description="gate modes of the supermask forecaster run side by side (market: the ALL mask; auto: "
        "each market's mode chosen on the window's held-out rows)")
    baselines: tuple[Literal[BASELINES], ...] = Field(  # type: ignore[valid-type]
        BASELINES, description="baselines in the same run (oracle: synthetic markets only)")
    dense_lr: float = Field(1e-3, gt=0, description="Adam learning rate of the dense baselines")
    steps: int | None = Field(None, ge=1, description="training steps of every refit's masks and dense nets "
                              "(None: training.steps); a step budget for long backtests")
    batched: bool = Field(True, description="fit every window's HMMs in order, then train every window's masks and "
                          "dense nets in one batched pass (each window still sees only its own past; with one "
                          "torch thread on CPU the results are bit-identical to window by window); false: train "
                          "window by window (less memory)")
    bootstrap: int = Field(1000, ge=100, description="stationary-bootstrap samples of each Sharpe CI")

    @model_validator(mode="after")
    def _rolling_needs_rows(self) -> BacktestConfig:
        if self.window == "rolling" and self.train_rows is None:
            raise ValueError("backtest.window 'rolling' needs backtest.train_rows")
        if self.start is not None and self.end is not None and self.end <= self.start:
            raise ValueError(f"backtest.end {self.end} is not after backtest.start {self.start}")
        return self


class TrackingConfig(_Section):
    experiment: str = "supsup-fin"
    model_name: str = "supsup-fin"
    metric: Literal["log_loss", "accuracy"] = "log_loss"
    margin: float = Field(0.0, ge=0)
    uri: str | None = None
    keep_last: int = Field(10, ge=1, description="retention: keep the last N versions' artifacts (and every champion)")
    carry_over: bool = Field(True, description="reuse the champion's masks whose market, regime, data, config "
                             "and training device are unchanged")


class NoveltyConfig(_Section):
    """SupSup's new-task rule as a novel-regime detector (``monitor``)."""

    enabled: bool = Field(True, description="run the novel-regime check in each monitoring pass")
    window: int = Field(20, ge=1, description="recent rows whose mean task-inference scores and entropies the rule reads")
    quantile: float = Field(0.99, gt=0.5, lt=1, description="the rule says 'no mask fits' when the best mask's entropy "
                            "or the spread of the masks' scores leaves its training range: above this quantile or "
                            "below 1 - quantile")
    min_rows: int = Field(40, ge=10, description="matured novel rows needed to train a new mask (its calibration "
                          "map needs 50 held-out rows, about 105 rows: until then the challenger answers the novel "
                          "rows' class frequencies)")
    train_new_mask: bool = Field(True, description="when the rule and the HMM test both say novel, train a new "
                                 "mask on the novel rows and register it as a challenger")


class MonitorConfig(_Section):
    """Scoring matured forecasts, drift checks and the alerts they raise (``monitor``)."""

    window: int = Field(60, ge=5, description="matured forecasts per market and version the rolling scores cover")
    min_matured: int = Field(20, ge=1, description="matured forecasts needed before 'worse than the prior' alerts")
    loss_margin: float = Field(0.0, ge=0, description="alert when the mean log-loss over the window exceeds the "
                               "class prior's by more than this")
    reliability_bins: int = Field(10, ge=2, le=50, description="bins of the reliability table and ECE")
    drift_window: int = Field(60, ge=10, description="recent rows the feature and HMM drift checks read")
    psi_bins: int = Field(10, ge=2, le=50, description="training-quantile bins of the population stability index")
    psi_threshold: float = Field(0.25, gt=0, description="the lowest PSI (recent rows against training) of an "
                                 "input feature that can raise an alert")
    psi_quantile: float = Field(0.995, gt=0.5, lt=1, description="an input feature's PSI alerts at or above this "
                                "quantile of its PSI over every drift_window of training rows (and psi_threshold)")
    hmm_quantile: float = Field(0.01, gt=0, lt=0.5, description="alert when the recent rows' mean filtered "
                                "log-likelihood falls below this quantile of its training range")
    backfill: int = Field(0, ge=0, description="`monitor` without --backfill: forecast and score the champion on "
                          "this many of the data's last dates first (0: score only what the forecast flow stored)")
    retrain_on_alert: bool = Field(False, description="under `schedule`: an alert triggers the retrain deployment "
                                   "(a Prefect automation)")
    novelty: NoveltyConfig = NoveltyConfig()


class ScheduleConfig(_Section):
    retrain_cron: str = "0 22 * * 1-5"
    forecast_cron: str = "30 22 * * 1-5"
    timezone: str = "America/New_York"
    _zone = field_validator("timezone")(_known_zone)
    prefect_port: int = Field(4200, ge=1, le=65535, description="port of the Prefect server `schedule` starts on 127.0.0.1")
    serve_port: int = Field(5001, ge=1, le=65535, description="port of `serve` on 127.0.0.1")


class RuntimeConfig(_Section):
    device: str = Field("auto", description="where masks train and the net runs: auto (cuda when torch sees a "
                        "CUDA device, else cpu), cpu, cuda or cuda:N")
    _device = field_validator("device")(_known_device)
    threads: int | None = Field(None, ge=1)
    task_runner: Literal["threads", "dask"] = "threads"
    max_workers: int = Field(4, ge=1)
    fit_processes: int = Field(
        0, ge=0, description="processes that fit a walk-forward's market HMMs side by side (0: one per CPU, up to "
        "one per market, when there are 2 or more markets and 20 or more market-window fits, else none; 1: all "
        "in this process)")
    training_groups: Literal["all", "market"] = Field(
        "all", description="train every mask in one batched group, or one group per market (dask: always market)")
    dask_address: str | None = Field(None, description="an existing Dask scheduler (tcp://...); None: a local cluster")
    n_workers: int = Field(2, ge=1, description="local Dask cluster: worker processes")
    threads_per_worker: int = Field(1, ge=1, description="local Dask cluster: threads per worker")


class Config(_Section):
    """The whole configuration. Only ``markets`` has no default."""

    name: str = "supsup-fin"
    markets: Annotated[tuple[MarketConfig, ...], Field(min_length=1)]
    segments: SegmentsConfig = SegmentsConfig()
    data: DataConfig = DataConfig()
    features: FeaturesConfig = FeaturesConfig()
    regimes: RegimesConfig = RegimesConfig()
    network: NetworkConfig = NetworkConfig()
    masks: MasksConfig = MasksConfig()
    training: TrainingConfig = TrainingConfig()
    gating: GatingConfig = GatingConfig()
    backtest: BacktestConfig = BacktestConfig()
    tracking: TrackingConfig = TrackingConfig()
    monitor: MonitorConfig = MonitorConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    runtime: RuntimeConfig = RuntimeConfig()

    @model_validator(mode="after")
    def _unique_market_names(self) -> Config:
        names = [m.name for m in self.markets]
        dups = sorted({n for n in names if names.count(n) > 1})
        if dups:
            raise ValueError(f"markets: names must be unique, repeated: {dups}")
        return self

    def market(self, name: str) -> MarketConfig:
        """The market called ``name``; a ``ConfigError`` listing the known names otherwise."""
        for m in self.markets:
            if m.name == name:
                return m
        raise ConfigError(f"unknown market {name!r}; configured: {[m.name for m in self.markets]}")

    def flat(self) -> dict[str, Any]:
        """Dotted-key view of the whole tree (``regimes.n_states`` ...) for tracking."""
        return _flatten(self.model_dump(mode="json"))


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    if isinstance(tree, list) and tree and all(isinstance(v, dict) for v in tree):
        out = {}
        for i, v in enumerate(tree):
            key = v.get("name", i) if isinstance(v, dict) else i
            out.update(_flatten(v, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): tree}


def _format_errors(err: ValidationError, where: str) -> str:
    errors = err.errors()
    lines = []
    for e in errors:
        n = len(e["loc"])
        if e["type"] == "too_short" and any(o["loc"][:n] == e["loc"] and len(o["loc"]) > n for o in errors):
            continue  # a list left short by its own invalid items, already reported
        path = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            lines.append(f"unknown key {path!r}")
        elif e["type"] == "missing":
            lines.append(f"missing required key {path!r}")
        elif e["type"] == "value_error":  # a validator's own message, which names what it checks
            msg = str(e.get("ctx", {}).get("error", e["msg"]))
            lines.append(f"{path}: {msg}" if path else msg)
        else:
            got = e.get("input")
            got_s = "" if isinstance(got, dict | list) else f" (got {got!r})"
            lines.append(f"{path or '<root>'}: {e['msg']}{got_s}")
    return f"{where}: " + "; ".join(lines)


def config_from_dict(tree: dict[str, Any], where: str = "<config>") -> Config:
    """Validate a plain dict as a :class:`Config`; errors name ``where`` and the key path."""
    if not isinstance(tree, dict):
        raise ConfigError(f"{where}: expected a mapping at the top level, got {type(tree).__name__}")
    try:
        cfg = Config.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, where)) from None
    # The feature registry lives with the formulas (features.py, which knows nothing of this module);
    # imported here, not at the top, so that importing the config does not import numpy and pandas.
    from supsup_fin.features import check_feature_names

    try:
        check_feature_names(cfg.features.names, [(m.name, m.source, m.dataset) for m in cfg.markets])
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None
    return cfg


def load_config(path: str | Path) -> Config:
    """Read and validate a YAML config file. A file market's relative ``path`` is relative to the
    config file's folder."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        tree = yaml.safe_load(path.read_bytes().decode("utf-8")) or {}
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text: {err}") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot be read: {err}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    return config_from_dict(_paths_from(tree, path.resolve().parent), where=str(path))


def _paths_from(tree: Any, folder: Path) -> Any:
    """``tree`` with each file market's relative ``path`` read from ``folder`` (the config file's)."""
    if not isinstance(tree, dict) or not isinstance(tree.get("markets"), list):
        return tree
    markets = [{**m, "path": str(folder / m["path"])}
               if isinstance(m, dict) and isinstance(m.get("path"), str) and not Path(m["path"]).expanduser().is_absolute()
               else m for m in tree["markets"]]
    return {**tree, "markets": markets}


def demo_config_path() -> Path:
    """The demo configuration shipped with the package (``configs/demo.yaml``)."""
    from importlib.resources import files

    shipped = Path(str(files("supsup_fin") / "_configs" / "demo.yaml"))
    if shipped.is_file():
        return shipped
    return Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
