"""Live forecasts: the champion on the latest data, and the forecasts table they are kept in."""
