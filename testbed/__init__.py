"""Orchestration: scenarios, runs, comparisons, sweeps and reports."""
