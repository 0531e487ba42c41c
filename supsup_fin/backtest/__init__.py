"""Walk-forward backtests: windows, strategies, positions and costs, metrics, continual scores."""
