"""Retrain on alert: the ``retrain`` deployment's trigger on the monitoring pass's alert events.

The monitoring pass emits one Prefect event per alert, named ``supsup-fin.alert.<kind>``, about
the resource ``supsup-fin.market.<market>``. With ``monitor.retrain_on_alert``, the retrain
deployment that ``schedule`` serves carries :func:`retrain_triggers`: the Prefect server's
triggers service (part of ``prefect server start``) runs the deployment, with its own
parameters, on the first matching event, then lets alerts pass for :data:`RETRAIN_COOLDOWN`.
A retrain covers every market, so the burst of alerts one monitoring pass raises makes one
retrain, not one per alert.
"""

from __future__ import annotations

from datetime import timedelta

from prefect.events import DeploymentEventTrigger

from supsup_fin.config import Config

ALERT_EVENTS = "supsup-fin.alert.*"
"""Event names of the monitoring pass's alerts (``supsup-fin.alert.<kind>``)."""
MARKET_RESOURCES = "supsup-fin.market.*"
"""Resource ids the alerts are about (``supsup-fin.market.<market>``)."""
RETRAIN_COOLDOWN = timedelta(hours=12)
"""After an alert starts a retrain, further alerts start none for this long."""


def retrain_triggers(cfg: Config) -> list[DeploymentEventTrigger]:
    """The retrain deployment's triggers: one on any alert event under ``monitor.retrain_on_alert``,
    none otherwise (pass as ``flow.to_deployment(..., triggers=...)``)."""
    if not cfg.monitor.retrain_on_alert:
        return []
    return [DeploymentEventTrigger(
        name=f"{cfg.name}-retrain-on-alert",
        description="an alert of the monitoring pass runs the retrain deployment",
        expect={ALERT_EVENTS}, match={"prefect.resource.id": MARKET_RESOURCES},
        posture="Reactive", threshold=1, within=RETRAIN_COOLDOWN,
    )]
