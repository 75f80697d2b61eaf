"""What a study was created with, so that a resume under other settings is refused, not mixed.

Trials measured under one workload, objective, space or server are not comparable with trials
measured under another: resuming a study with a changed objective file or profile would rank
them together. The fingerprint is stored with the study when it is created; a later run with a
different one is refused with the differences, unless ``--force``.
"""

from __future__ import annotations

from typing import Any

from tuner.config.objective import ObjectiveFile
from tuner.config.profile import Profile
from tuner.config.space import SearchSpace

__all__ = ["differences", "fingerprint"]


def fingerprint(space: SearchSpace, objective: ObjectiveFile, profile: Profile) -> dict[str, Any]:
    """The settings that make two trials comparable, as plain data."""
    return {
        "space": {
            d.name: {
                "values": list(d.values),
                "flag": d.flag,
                "env": d.env,
                # only when set: a study made before conditions keeps its fingerprint
                **({"when": [[k, list(vs)] for k, vs in d.when]} if d.when else {}),
                **({"json_key": d.json_key, "into": d.into} if d.json_key else {}),
            }
            for d in space.dimensions
        },
        "objective": objective.model_dump(mode="json", exclude={"name", "description"}),
        "profile": {"server": profile.server.to_args(), "deployer": profile.deployer.kind},
    }


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    """A nested mapping as one level of dotted keys (``objective.workload.conversations``)."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: value}


def differences(old: dict[str, Any], new: dict[str, Any], limit: int = 4) -> list[str]:
    """``key: old -> new`` for the settings that differ (the first ``limit``, then a count)."""
    a, b = _flat(old), _flat(new)
    keys = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    shown = [f"{k}: {a.get(k, '(unset)')!r} -> {b.get(k, '(unset)')!r}" for k in keys[:limit]]
    if len(keys) > limit:
        shown.append(f"and {len(keys) - limit} more")
    return shown
