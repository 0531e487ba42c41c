"""Closing the loop: score matured forecasts, check drift and novel regimes, raise alerts."""
