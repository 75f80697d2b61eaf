"""Re-measure chosen trials of a finished study in interleaved validation rounds.

Usage: python benchmarks/gpu/remeasure.py STUDIES_DIR STUDY 36,2,10 ROUNDS BUDGET_S \
           PROFILE OBJECTIVE [SPACE]
Each round redeploys every listed trial's configuration once, in order, on held-out
conversations (tuner.study.Validator: the study's linked validation study, resumable); then
prints what validation says. BUDGET_S bounds the run (a deployment under way finishes).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from tuner.config import load_objective, load_profile, load_space
from tuner.report import recommend
from tuner.study import StudyPaths, ValidationSettings, Validator, load_study


def main() -> None:
    root, name, numbers, rounds, budget, profile, objective = sys.argv[1:8]
    space = sys.argv[8] if len(sys.argv) > 8 else "search_spaces/seed_192.yaml"
    paths = StudyPaths.create(name, Path(root))
    study = load_study(paths)
    candidates = [study.trials[int(n)] for n in numbers.split(",")]
    result = Validator(
        paths=paths,
        space=load_space(Path(space)),
        objective=load_objective(Path(objective)),
        profile=load_profile(Path(profile)),
        candidates=candidates,
        settings=ValidationSettings(rounds=int(rounds), deadline=time.monotonic() + float(budget)),
        on_trial_end=lambda o: print(o.number, o.params, o.state, o.reason, o.values, flush=True),
    ).run()
    print(f"{result.done}/{result.planned} deployments")
    rec = recommend(load_study(paths), root=paths.root)
    if rec is not None and rec.validation is not None:
        for r in rec.validation.results:
            print(f"trial {r.candidate.number}: HIT per deployment {r.per_deployment}, "
                  f"pooled {r.value:.1f} ms")  # fmt: skip
        print(rec.validation.words())


if __name__ == "__main__":
    main()
