"""Reading a study back: Pareto front, tables and exports."""

from __future__ import annotations

from tuner.report.pareto import pareto_frame, pareto_trials, trials_frame, write_pareto

__all__ = ["pareto_frame", "pareto_trials", "trials_frame", "write_pareto"]
