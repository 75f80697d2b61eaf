"""Reading a study back: Pareto front, synthesis table, recommendation, report files."""

from tuner.report.documents import build_report, write_report
from tuner.report.pareto import pareto_frame, pareto_trials, trials_frame, write_pareto
from tuner.report.recommend import Recommendation, Rule, parse_rule, recommend

__all__ = [
    "Recommendation",
    "Rule",
    "build_report",
    "pareto_frame",
    "pareto_trials",
    "parse_rule",
    "recommend",
    "trials_frame",
    "write_pareto",
    "write_report",
]
