"""Reading a study back: Pareto front, synthesis table, recommendation, report files."""

from tuner.report.documents import build_report, write_report
from tuner.report.pareto import pareto_frame, pareto_trials, trials_frame, write_pareto
from tuner.report.recommend import (
    Recommendation,
    Rule,
    parse_rule,
    recommend,
    validation_candidates,
)
from tuner.report.validation import tied_candidates

__all__ = [
    "Recommendation",
    "Rule",
    "build_report",
    "pareto_frame",
    "pareto_trials",
    "parse_rule",
    "recommend",
    "tied_candidates",
    "trials_frame",
    "validation_candidates",
    "write_pareto",
    "write_report",
]
