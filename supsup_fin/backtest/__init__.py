"""Walk-forward backtests: windows, positions and costs, metrics, baselines."""
