"""A novel-regime challenger in the registry: a new version that is never promoted on its own.

:func:`~supsup_fin.monitor.new_mask.new_mask_challenger` builds a forecaster whose market routes
to a mask trained on a novel regime's rows. :func:`register_challenger` records it as one MLflow
run (``novel-regime-<market>``: the verdict and the new mask's figures) and registers it as a new
version of the model, tagged

- ``supsup_fin.challenger=novel_regime`` and ``supsup_fin.challenger.reason`` (the market, the
  first novel date and the statistics that said novel);
- ``promotion.promoted=False`` with a ``promotion.reason``: the decision is recorded (so the
  next retrain's recovery does not take it for a killed registration and ``promote``
  accepts it), and it is a person's: ``supsup-fin promote --version N``;
- the forecaster's manifest hash, markets and data range, as a retrain's version has.

It takes the ``challenger`` alias, as a retrain's version does; ``champion`` does not move. A
monitoring pass asks :func:`registered_challenger` first: a novel run that already has its
challenger needs no second one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException

from supsup_fin.config import Config
from supsup_fin.errors import DataError
from supsup_fin.monitor.new_mask import NewMask
from supsup_fin.tracking.describe import NOTE_TAG, describe_model
from supsup_fin.tracking.recovery import DECIDED_TAG
from supsup_fin.tracking.registry import CHALLENGER, champion_version, delete_version
from supsup_fin.tracking.runs import log_version
from supsup_fin.tracking.store import connect, run_tags, tracking_uri
from supsup_fin.workspace import Workspace

log = logging.getLogger(__name__)

__all__ = ["CHALLENGER_TAG", "NOVEL_REGIME", "REASON_TAG", "ChallengerRecord", "register_challenger",
           "registered_challenger"]

CHALLENGER_TAG = "supsup_fin.challenger"
"""Version tag: why the version is a challenger (:data:`NOVEL_REGIME`)."""
REASON_TAG = "supsup_fin.challenger.reason"
"""Version tag: the market, the first novel date and the statistics."""
NOVEL_REGIME = "novel_regime"


@dataclass(frozen=True)
class ChallengerRecord:
    """Where the challenger was recorded: its run, registered version and the champion it challenges."""

    run_id: str
    tracking_uri: str
    model_name: str
    version: int
    champion_version: int | None
    reason: str


def _reason(new: NewMask, verdict: dict[str, Any]) -> str:
    """One sentence naming the market, since and the statistics."""
    stat = verdict.get("statistic")
    rule = (f"{'best-mask entropy' if stat == 'entropy' else 'score spread'} {verdict[stat]:.4g} beyond its "
            f"training bound {verdict[f'{stat}_threshold']:.4g}" if stat else "the rule")
    return (f"market {new.market!r}: novel regime since {new.since} ({rule}; mean predictive log-likelihood "
            f"{verdict['log_likelihood']:.4g} below {verdict['log_likelihood_threshold']:.4g}); new mask "
            f"{new.task!r} trained on {new.n_rows} matured novel rows")


def register_challenger(cfg: Config, workspace: Workspace, new: NewMask, verdict: dict[str, Any],
                        prices: dict[str, pd.DataFrame]) -> ChallengerRecord:
    """Record ``new``'s challenger forecaster as one MLflow run and register it, not champion.

    Parameters
    ----------
    cfg : ``tracking`` names the store and the registered model.
    workspace : where the default store lives.
    new : a ``trained`` result of :func:`~supsup_fin.monitor.new_mask.new_mask_challenger`.
    verdict : the :func:`~supsup_fin.monitor.novelty.detect_novelty` verdict it was trained on.
    prices : each market's prices (the input example and the data range tags).

    Returns
    -------
    ChallengerRecord

    A version registered here is deleted again when tagging it fails, as a retrain's is.
    """
    if new.status != "trained" or new.forecaster is None:
        raise DataError(f"market {new.market!r}: no challenger to register ({new.status}: {new.message})")
    client = connect(cfg.tracking, workspace)
    name, fc = cfg.tracking.model_name, new.forecaster
    champ, reason = champion_version(client, name), _reason(new, verdict)
    with mlflow.start_run(run_name=f"novel-regime-{new.market}") as run:
        mlflow.set_tags({"supsup_fin.flow": NOVEL_REGIME, "market": new.market, "novel_since": str(new.since),
                         "new_mask": str(new.task), "challenges": str(champ), **run_tags()})
        mlflow.log_metrics({k: float(verdict[k]) for k in ("entropy", "flatness", "log_likelihood")
                            if verdict.get(k) is not None} | {"novel_rows": float(new.n_rows)})
        mlflow.log_dict({"verdict": verdict, "mask": fc.bank.meta(str(new.task))}, "novelty/verdict.json")
        decision = ("novel-regime challenger: never promoted on its own; compare it with the champion and promote "
                    "it by hand (supsup-fin promote)")
        tags = {CHALLENGER_TAG: NOVEL_REGIME, REASON_TAG: reason[:5000], DECIDED_TAG: "False",
                "promotion.reason": decision, "novel_regime.market": new.market,
                "novel_regime.since": str(new.since), "novel_regime.mask": str(new.task)}
        version = log_version(client, fc, prices, name, tags)
        try:
            client.set_registered_model_alias(name, CHALLENGER, str(version))
            text = (f"**Novel-regime challenger** of champion v{champ}. {reason}. Never promoted on its own: "
                    f"compare it with the champion and promote it by hand (`supsup-fin promote --version {version}`).")
            client.update_model_version(name, str(version), description=text)
            mlflow.set_tags({"registered_version": str(version), NOTE_TAG: text})
            describe_model(client, name, f"novel-regime run `{run.info.run_id}` registered challenger v{version} "
                                         f"for market {new.market} (not promoted)")
        except BaseException:
            delete_version(client, name, version)
            raise
    log.info("model %s: registered novel-regime challenger v%d (%s)", name, version, reason)
    return ChallengerRecord(run.info.run_id, tracking_uri(cfg.tracking, workspace), name, version, champ, reason)


def registered_challenger(cfg: Config, workspace: Workspace, market: str, since: str) -> int | None:
    """The latest version registered as the challenger of ``market``'s novel regime since ``since``, or None."""
    client = connect(cfg.tracking, workspace)
    try:
        found = client.search_model_versions(f"name = '{cfg.tracking.model_name}'")
    except MlflowException:
        return None
    hits = [int(v.version) for v in found if v.tags.get(CHALLENGER_TAG) == NOVEL_REGIME
            and v.tags.get("novel_regime.market") == market and v.tags.get("novel_regime.since") == str(since)]
    return max(hits) if hits else None
