"""The production recommendation: one configuration, chosen by a rule the user can change.

Rules (``--rule`` on the command line):

- ``default``: among the feasible Pareto points (those meeting the success criteria) whose TTFT
  MISS stays within the criteria, the best group on TTFT HIT (the fastest and every point whose
  difference to it is within noise: ``tuner.report.decide``); inside it, the fewest changes from
  the baseline, then the lowest VRAM.
- ``objective:NAME``: the lowest (or highest, per its direction) value of one objective.
- ``weights:NAME=W,NAME=W``: each objective min-max normalised over the candidates, then the
  lowest weighted sum (objectives to maximise are flipped first).

Without a feasible point every rule falls back to the whole Pareto front and says so.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from tuner.config.profile import DEFAULT_DEPLOYMENT
from tuner.decide import (
    HIT,
    MISS,
    TIE,
    VRAM,
    Group,
    ValidationSummary,
    changes_from,
    exclusion,
    load_validation,
    miss_ok,
    reference_params,
    search_order,
    summarize_validation,
)
from tuner.errors import ConfigError
from tuner.report.synthesis import ranges_overlap, sample_range
from tuner.trial import Attr, StoredTrial, StudyAttr, metric_sign, metric_value

__all__ = ["Recommendation", "Rule", "parse_rule", "recommend"]


@dataclass(frozen=True, slots=True)
class Rule:
    """A recommendation rule (``--rule``): default, objective:NAME or weights:NAME=W,..."""

    kind: str  # "default", "objective" or "weights"
    objective: str | None = None
    weights: tuple[tuple[str, float], ...] = ()

    def describe(self) -> str:
        """The rule in words, for the explanation."""
        if self.kind == "objective":
            return f"the best {self.objective} among the candidates"
        if self.kind == "weights":
            ws = ", ".join(f"{n} x{w:g}" for n, w in self.weights)
            return f"the lowest weighted sum of min-max normalised objectives ({ws})"
        return (
            "the lowest TTFT HIT among feasible Pareto points whose TTFT MISS meets the criteria; "
            "points within noise of it on HIT (the 95 % interval of the difference, carrying "
            "each deployment's samples and the variation between deployments, "
            "Bonferroni-corrected, contains 0, and within 5 % of it) form its group, and the "
            "group member with the fewest changes from the baseline, then the lowest VRAM, is "
            "chosen"
        )


def parse_rule(text: str) -> Rule:
    """``default`` | ``objective:NAME`` | ``weights:NAME=W,...`` (a ConfigError otherwise)."""
    text = text.strip()
    if text in ("", "default"):
        return Rule("default")
    kind, _, rest = text.partition(":")
    if kind == "objective" and rest:
        return Rule("objective", objective=rest.strip())
    if kind == "weights" and rest:
        pairs: list[tuple[str, float]] = []
        for part in rest.split(","):
            name, eq, w = part.partition("=")
            try:
                weight = float(w)
            except ValueError:
                weight = -1.0
            if not eq or weight < 0:
                raise ConfigError(f"bad weight {part!r}: expected NAME=NUMBER (>= 0)", key="rule")
            pairs.append((name.strip(), weight))
        return Rule("weights", weights=tuple(pairs))
    raise ConfigError(
        f"unknown rule {text!r}: use default, objective:NAME or weights:NAME=W,...", key="rule"
    )


@dataclass(frozen=True, slots=True)
class Recommendation:
    """The configuration to deploy, why, and how: vLLM, compose and docker command lines."""

    trial: FrozenTrial
    name: str
    rule: Rule
    feasible: bool  # chosen among points meeting the success criteria
    runners_up: tuple[FrozenTrial, ...]
    vllm_args: tuple[str, ...]
    explanation: str
    notes: tuple[str, ...] = field(default=())
    # image, gpus, port, volumes, pass_env, shm_size: from the profile, stored with the study
    deployment: dict[str, Any] = field(default_factory=dict)
    group: Group | None = None  # default rule: the best group on HIT the pick was made in
    validation: ValidationSummary | None = None  # what the validation rounds found, if run

    @property
    def flags(self) -> list[str]:
        """The tuned flags alone (what a compose file's command gets)."""
        return [str(f) for f in self.trial.user_attrs.get(Attr.FLAGS, [])]

    @property
    def vllm_command(self) -> str:
        """``vllm serve MODEL ...`` with the fixed arguments and the trial's flags."""
        args = list(self.vllm_args)
        model = args[args.index("--model") + 1] if "--model" in args else "MODEL"
        rest = _without(args, "--model")
        return shlex.join(["vllm", "serve", model, *rest])

    @property
    def compose_snippet(self) -> str:
        """The ``command:`` list of a compose service running the recommendation."""
        lines = ["    command:"]
        lines += [f"      - {_yaml_scalar(a)}" for a in self.vllm_args]
        return "\n".join(lines)

    @property
    def docker_run(self) -> str:
        """A ``docker run`` line with the profile's image, GPUs, port, volumes and env names."""
        d = {**DEFAULT_DEPLOYMENT, **self.deployment}
        head = ["docker", "run"]
        gpus = d["gpus"]
        if gpus != "none":
            head += ["--gpus", "all" if gpus == "all" else f'"device={",".join(gpus)}"']
        head += ["--ipc=host"] if not d.get("shm_size") else [f"--shm-size={d['shm_size']}"]
        head += ["-p", f"{d['port']}:{d['port']}"]
        for host, target in d["volumes"].items():
            head += ["-v", f"{host}:{target}"]
        for name in d["pass_env"]:
            head += ["-e", name]
        head.append(d["image"])
        args = list(self.vllm_args)
        if d["port"] != 8000:
            args += ["--port", str(d["port"])]
        return " ".join([*head, *(shlex.quote(a) for a in args)])


def _without(args: list[str], flag: str) -> list[str]:
    """``args`` without ``flag`` and its value."""
    i = args.index(flag) if flag in args else -1
    return args if i < 0 else args[:i] + args[i + 2 :]


def _yaml_scalar(a: str) -> str:
    """A command argument for a compose ``command:`` list: numbers quoted, so YAML keeps them
    strings."""
    # Numbers stay strings in a command list: quote them, as compose files usually do.
    try:
        float(a)
    except ValueError:
        return a
    return f'"{a}"'


def _names(study: optuna.Study) -> list[str]:
    """The study's objective names (objective_N where it has none)."""
    return list(study.metric_names or [f"objective_{i}" for i in range(len(study.directions))])


def _value(study: optuna.Study, t: FrozenTrial, name: str) -> float:
    """``metric_value``, refusing a name the study neither optimises nor records (a rule's
    typo would otherwise sort on NaN)."""
    names = _names(study)
    if name not in names and name not in t.user_attrs:
        raise ConfigError(
            f"unknown objective {name!r}: the study has {', '.join(names)}", key="rule"
        )
    return metric_value(study, t, name)


def _label(t: FrozenTrial) -> str:
    """A trial as the explanation names it: its number, and its seed's name."""
    seed = StoredTrial(t).seed_name
    return f"trial {t.number} ({seed})" if seed else f"trial {t.number}"


def _score(study: optuna.Study, rule: Rule, cands: list[FrozenTrial]) -> list[FrozenTrial]:
    """Candidates ordered best first under ``rule``."""
    if rule.kind == "objective":
        assert rule.objective is not None
        name = rule.objective
        sign = metric_sign(study, name)
        return sorted(cands, key=lambda t: (sign * _value(study, t, name), t.number))
    if rule.kind == "weights":
        cols: dict[str, tuple[float, float, float]] = {}
        for name, _ in rule.weights:
            vals = [_value(study, t, name) for t in cands]
            cols[name] = (min(vals), max(vals), metric_sign(study, name))

        def weighted(t: FrozenTrial) -> float:
            total = 0.0
            for name, w in rule.weights:
                lo, hi, sign = cols[name]
                x = (_value(study, t, name) - lo) / (hi - lo) if hi > lo else 0.0
                total += w * (x if sign > 0 else 1.0 - x)
            return total

        return sorted(cands, key=lambda t: (weighted(t), t.number))
    # default: ordered by recommend() with the group (needs the raw samples)
    return sorted(cands, key=lambda t: (_value(study, t, HIT), t.number))


def _group_words(study: optuna.Study, group: Group, best: FrozenTrial) -> str:
    """The group and the choice inside it, in words, with the numbers that decided."""
    ref = reference_params(study)
    base = "the baseline" if ref is not None else "vLLM's defaults"
    if len(group.members) == 1:
        return (
            f"{_label(best)} has the lowest TTFT HIT and no other candidate is level with it: "
            "each is beyond the noise (its 95 % Bonferroni-corrected interval excludes 0"
            + (f", carrying {group.noise.words()}" if group.noise is not None else "")
            + f") or more than {TIE:.0%} slower on its estimate, which the noise may not carry "
            f"(the lines below say which; {group.comparisons} difference(s) tested)."
        )
    nums = sorted(t.number for t in group.members)
    listed = ", ".join(str(n) for n in nums[:-1]) + f" and {nums[-1]}"
    how = "95 % intervals of their differences to the fastest"
    if group.noise is not None:
        how += f", carrying {group.noise.words()}"
    if not group.on_samples:
        how = "compared on their medians (no raw samples for some of them)"
    words = [
        f"Trials {listed} are within noise on TTFT HIT ({how}, Bonferroni-corrected for "
        f"{group.comparisons} comparison(s), contain 0)."
    ]
    n_best = changes_from(best.params, ref)
    others = [t for t in group.members if t.number != best.number]
    fewer = [t for t in others if changes_from(t.params, ref) > n_best]
    if fewer:
        words.append(
            f"Trial {best.number} is chosen because it changes {n_best} setting(s) from {base}"
            + ", where "
            + ", ".join(f"trial {t.number} changes {changes_from(t.params, ref)}" for t in fewer)
            + "."
        )
    else:
        words.append(
            f"Trial {best.number} is chosen: as few changes from {base} as any ({n_best}), "
            "then the lowest VRAM."
        )
    return " ".join(words)


def _fmt_range(t: FrozenTrial, name: str, value: float) -> str:
    """A value with the min-max range of its samples."""
    r = sample_range(t, name.removesuffix("_ms"))
    return f"{value:.1f} ms [{r[0]:.0f}-{r[1]:.0f}]" if r else f"{value:.1f} ms"


def _explain(
    study: optuna.Study,
    rule: Rule,
    best: FrozenTrial,
    others: list[FrozenTrial],
    group: Group | None,
) -> str:
    """Why ``best`` was chosen, in words with the numbers: the rule, its group within noise, its
    own figures and how it compares with the next two."""
    names = _names(study)
    parts = [f"{_label(best)} is recommended by {rule.describe()}."]
    if group is not None:
        parts.append(_group_words(study, group, best))
    if HIT in names and MISS in names:
        parts.append(
            f"It measured TTFT HIT {_fmt_range(best, HIT, _value(study, best, HIT))} and "
            f"TTFT MISS {_fmt_range(best, MISS, _value(study, best, MISS))}"
            + (f", {_value(study, best, VRAM):.0f} MiB" if VRAM in names else "")
            + "."
        )
    for o in others[:2]:
        diffs = []
        for n in names:
            a, b = _value(study, best, n), _value(study, o, n)
            if b:
                diffs.append(f"{n} {a - b:+.1f} ({(a - b) / abs(b) * 100:+.1f} %)")
        sentence = f"Against {_label(o)}: " + ", ".join(diffs) + "."
        if group is not None and o.number in group.diffs:
            lo, hi = group.diffs[o.number]
            inside = o.number in group.numbers
            fastest = _value(study, group.best, HIT)
            why = (
                "within the noise"
                if inside
                else exclusion((lo, hi), _value(study, o, HIT), fastest)
            )
            sentence += f" Its HIT minus the fastest's: [{lo:+.1f}, {hi:+.1f}] ms, {why}."
        elif HIT in names and ranges_overlap(best, o, "ttft_hit"):
            sentence += " Their HIT sample ranges overlap: the difference may be noise."
        parts.append(sentence)
    return " ".join(parts)


def recommend(
    study: optuna.Study,
    rule: Rule | None = None,
    server_args: list[str] | None = None,
    root: Path | None = None,
    *,
    use_validation: bool = True,
) -> Recommendation | None:
    """The configuration to deploy, or None when no trial completed.

    ``root``: the study folder, where the trials' raw samples are (for the groups within noise);
    without it the paths recorded in the trials are tried. With the default rule and a
    validation study (``tuner validate``), the pick is the validated one and the explanation
    starts with what validation found (``use_validation=False``: the search's own pick).
    """
    rule = rule or Rule("default")
    front, group, feasible = search_order(study, root)
    if not front:
        return None
    if rule.kind != "default" or group is None:
        group = None
        ordered = _score(study, rule, front)
    else:
        ordered = front
    best = ordered[0]
    validated: ValidationSummary | None = None
    vstudy = load_validation(study) if use_validation and rule.kind == "default" else None
    if vstudy is not None:
        validated = summarize_validation(study, vstudy, root, search_pick=best.number)
        if validated.pick is not None:
            best = validated.pick.candidate
            ordered = [best, *(t for t in ordered if t.number != best.number)]
    notes: list[str] = []
    if validated is not None and validated.held is False:
        notes.append(f"the search's pick (trial {validated.search_pick}) did not hold")
    if not feasible:
        notes.append(
            "no trial meets the success criteria: chosen from the Pareto front of all trials"
        )
    if rule.kind == "default" and not miss_ok(best):
        notes.append("no front point keeps TTFT MISS within the criteria")
    fixed = server_args if server_args is not None else _server_args(study)
    flags: list[str] = list(best.user_attrs.get(Attr.FLAGS, []))
    return Recommendation(
        trial=best,
        name=StoredTrial(best).seed_name or f"trial_{best.number}",
        rule=rule,
        feasible=feasible,
        runners_up=tuple(ordered[1:4]),
        vllm_args=tuple([*fixed, *flags]),
        explanation=(validated.words() + " " if validated else "")
        + _explain(study, rule, best, ordered[1:], group),
        notes=tuple(notes),
        group=group,
        validation=validated,
        deployment=dict(study.user_attrs.get(StudyAttr.DEPLOYMENT) or {}),
    )


def _server_args(study: optuna.Study) -> list[str]:
    """The fixed server arguments the study stored (production's, without measurement flags)."""
    args: Any = study.user_attrs.get(StudyAttr.SERVER_ARGS)
    return [str(a) for a in args] if isinstance(args, list) else []
