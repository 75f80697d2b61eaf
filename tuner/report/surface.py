"""``tuner export-surface``: a study's measurements as a replayable surface (raw samples)."""

from __future__ import annotations

from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from tuner.errors import Reason
from tuner.schema import Surface, SurfacePoint, TrialFolder
from tuner.trial import Attr, StoredTrial, StudyAttr

__all__ = ["export_surface"]

# Failures a replay reproduces; "invalid" only when vLLM itself refused (the trial deployed).
_REPLAYED_FAILURES = (
    Reason.CRASH,
    Reason.OOM,
    Reason.INVALID,
    Reason.TIMEOUT,
    Reason.REQUEST_ERROR,
)


def _folder(root: Path, t: FrozenTrial) -> TrialFolder:
    """A trial's folder: in the study folder, else where the trial recorded it."""
    # The recorded path may be another machine's (e.g. the GPU box): the study folder wins.
    local = TrialFolder.of(root, t.number)
    return local if local.path.exists() else TrialFolder(Path(str(t.user_attrs[Attr.TRIAL_DIR])))


def export_surface(study: optuna.Study, root: Path, description: str = "") -> Surface:
    """Every measured or failed deployment of ``study`` (whose folder is ``root``)."""
    points: dict[str, SurfacePoint] = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL)):
        a = t.user_attrs
        if Attr.DUPLICATE_OF in a or not a.get(Attr.DEPLOYED):
            continue
        params, flags, env = dict(t.params), list(a.get("flags", [])), dict(a.get("env", {}))
        if t.state == TrialState.COMPLETE:
            doc = _folder(root, t).read_measurements()
            miss, hit = doc.ttft("miss"), doc.ttft("hit")
            p = SurfacePoint(
                params,
                flags,
                env,
                status="ok",
                miss_ms=miss,
                hit_ms=hit,
                hit_rate=float(a.get("hit_rate_hit") or 0.0),
                vram_mib=float(a.get("vram_mib", 0.0)),
                startup_s=float(a.get("startup_s", 0.0)),
            )
        elif StoredTrial(t).reason in _REPLAYED_FAILURES:
            p = SurfacePoint(
                params, flags, env, status=str(a["reason"]), error=str(a.get("error", ""))
            )
        else:
            continue
        points.setdefault(p.key, p)  # a re-measured point keeps its first measurement
    return Surface(
        name=study.study_name,
        description=description or f"exported from study {study.study_name}",
        space=str(study.user_attrs.get(StudyAttr.SPACE, "")),
        objectives=list(study.metric_names or []),
        points=list(points.values()),
    )
