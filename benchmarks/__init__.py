"""Speed and scale measurements: they print figures, they never assert timings."""
