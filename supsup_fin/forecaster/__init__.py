"""The forecaster's build path: prepare -> mask tasks -> training -> gating -> evaluate -> save/load.

- :mod:`~supsup_fin.forecaster.prepare`: features, targets and the regime fit per market;
- :mod:`~supsup_fin.forecaster.mask_tasks`: the ``market/regime`` and ``market/ALL`` training sets;
- :mod:`~supsup_fin.forecaster.training`: all masks trained together on one frozen network;
- :mod:`~supsup_fin.forecaster.gating`: :class:`RegimeGatedForecaster`, HMM posterior -> mask(s);
- :mod:`~supsup_fin.forecaster.evaluate`: scores on ``valid`` / ``test`` against the class prior.
"""
