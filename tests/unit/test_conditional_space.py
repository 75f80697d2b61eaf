"""Conditional dimensions and JSON flags: counting, flags, keys, seeds, files, and a study."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT
from tuner.config import ObjectiveFile, load_seeds, load_space
from tuner.config.space import SearchSpace
from tuner.errors import ConfigError
from tuner.study import RunSettings, StudyPaths, StudyRunner, load_study
from tuner.study._fingerprint import fingerprint
from tuner.testing import fake_profile
from tuner.trial import StoredTrial

EXTENDED = ROOT / "search_spaces" / "agent_extended.yaml"
OFF: dict[str, Any] = {
    "gpu_memory_utilization": 0.95,
    "enable_prefix_caching": True,
    "enable_chunked_prefill": True,
    "max_num_seqs": None,
    "max_num_batched_tokens": None,
}


@pytest.fixture
def extended() -> SearchSpace:
    return load_space(EXTENDED)


def test_a_conditional_dimension_counts_only_where_it_exists(extended: SearchSpace) -> None:
    """192 seed points x KV precision 2 x offload (off, 8, 32) x speculation (off, n-gram k=2,
    k=4, suffix) x async 2, against 192 x 2 x 2 x 2 x 3 x 2 x 2 for the product of the lists."""
    points = list(extended.points())
    assert extended.size == len(points) == 192 * 2 * 3 * 4 * 2
    assert len({extended.key(p) for p in points}) == len(points)
    for p in points:
        assert (p["kv_offloading_size"] is None) == (p["kv_offloading_backend"] is None)
        assert (p["num_speculative_tokens"] is None) == (p["speculative_method"] != "ngram")
        assert extended.consistent(p) is None


def test_json_flag_gathers_the_dimensions_written_into_it(extended: SearchSpace) -> None:
    point = extended.complete(
        {**OFF, "speculative_method": "ngram", "num_speculative_tokens": 4,
         "kv_offloading_backend": "native", "kv_offloading_size": 8, "kv_cache_dtype": "fp8"}
    )  # fmt: skip
    flags = extended.to_flags(point)
    i = flags.index("--speculative-config")
    assert json.loads(flags[i + 1]) == {"method": "ngram", "num_speculative_tokens": 4}
    assert flags[flags.index("--kv-offloading-backend") + 1] == "native"
    assert flags[flags.index("--kv-offloading-size") + 1] == "8"
    assert flags[flags.index("--kv-cache-dtype") + 1] == "fp8"
    suffix = extended.to_flags(extended.complete({**OFF, "speculative_method": "suffix"}))
    assert json.loads(suffix[suffix.index("--speculative-config") + 1]) == {"method": "suffix"}
    plain = extended.to_flags(extended.complete(OFF))
    assert not {"--speculative-config", "--kv-offloading-size", "--kv-cache-dtype"} & set(plain)


def test_one_configuration_has_one_key(extended: SearchSpace) -> None:
    """A value left on a dimension that does not exist is not another configuration; an
    inconsistent point says which dimension and why."""
    base = extended.complete(OFF)
    stray = {**base, "num_speculative_tokens": 4}
    assert extended.key(stray) == extended.key(base)
    assert "exists only when speculative_method" in (extended.consistent(stray) or "")
    unset = {**base, "speculative_method": "ngram"}
    assert "must be set" in (extended.consistent(unset) or "")
    assert extended.normalize(unset)["num_speculative_tokens"] == 2


def test_seeds_may_leave_out_what_the_space_defaults(extended: SearchSpace) -> None:
    """The mission's 12 seeds, written for the five knobs, load on the extended space with
    every new knob at vLLM's default; a seed setting a dimension where it cannot exist, or
    leaving out one without a default, is refused with its key."""
    seeds = load_seeds(ROOT / "configs" / "strategic_12.yaml", extended)
    assert len(seeds) == 12
    assert all(s.params["speculative_method"] is None for s in seeds)
    assert extended.to_flags(seeds[0].params) == load_space(
        ROOT / "search_spaces" / "seed_192.yaml"
    ).to_flags({k: seeds[0].params[k] for k in OFF})
    with pytest.raises(ConfigError, match="exists only when"):
        extended.check({**OFF, "num_speculative_tokens": 2})
    with pytest.raises(ConfigError, match="missing value for gpu_memory_utilization"):
        extended.check({k: v for k, v in OFF.items() if k != "gpu_memory_utilization"})


@pytest.mark.parametrize(
    ("dims", "message"),
    [
        ("  b: {values: [1, 2], flag: --b, when: {a: [x]}}\n  a: {values: [x, y], flag: --a}\n",
         "not a dimension declared before it"),
        ("  a: {values: [x, y], flag: --a}\n  b: {values: [1, 2], flag: --b, when: {a: [z]}}\n",
         "is not one of"),
        ("  a: {values: [x, y], flag: --a}\n  b: {values: [1], into: a, json_key: k, when: {a: [x]}}\n",
         "needs a dimension with a flag and json_key"),
        ("  a: {values: [x, y], flag: --a, json_key: m}\n  b: {values: [1], into: a, json_key: k}\n",
         "needs `when` on it"),
    ],
)  # fmt: skip
def test_a_bad_condition_is_refused_naming_the_file(
    tmp_path: Path, dims: str, message: str
) -> None:
    path = tmp_path / "space.yaml"
    path.write_text("name: s\ndimensions:\n" + dims)
    with pytest.raises(ConfigError, match=message) as err:
        load_space(path)
    assert "space.yaml" in str(err.value)


def test_a_space_without_conditions_keeps_its_points_and_fingerprint(
    space: SearchSpace, objective: ObjectiveFile
) -> None:
    """seed_192: the product of its lists, in order, and a fingerprint with no new keys (a
    study made before conditions resumes)."""
    dims = [d.values for d in space.dimensions]
    assert list(space.points()) == [
        dict(zip(space.names, combo, strict=True)) for combo in itertools.product(*dims)
    ]
    fp = fingerprint(space, objective, fake_profile())
    assert all(set(v) == {"values", "flag", "env"} for v in fp["space"].values())


def test_a_study_on_the_extended_space_deploys_only_configurations(
    tmp_path: Path, extended: SearchSpace, objective: ObjectiveFile
) -> None:
    """TPE draws every dimension; the proposer drops a conditional one where it does not
    exist: 30 deployments, 30 distinct configurations, every stored point consistent, the new
    knobs tried, no duplicate and no invalid trial."""
    seeds = load_seeds(ROOT / "configs" / "strategic_12.yaml", extended)
    StudyRunner(
        paths=StudyPaths.create("s", tmp_path),
        space=extended,
        seeds=seeds[:4],
        objective=objective,
        profile=fake_profile(),
        settings=RunSettings(n_trials=30, sampler_seed=3),
    ).run()
    study = load_study(StudyPaths.create("s", tmp_path))
    deployed = [t for t in study.trials if StoredTrial(t).deployed]
    assert len(deployed) == 30 == len({extended.key(t.params) for t in deployed})
    assert all(extended.consistent(t.params) is None for t in study.trials)
    assert not [t for t in study.trials if StoredTrial(t).reason in ("duplicate", "invalid")]
    assert any(t.params["speculative_method"] == "ngram" for t in deployed)
    spec = [t for t in deployed if t.params["speculative_method"] == "ngram"]
    assert all("num_speculative_tokens" in t.user_attrs["flags"][
        t.user_attrs["flags"].index("--speculative-config") + 1] for t in spec)  # fmt: skip


def test_a_replayed_surface_of_the_extended_space_answers_its_configurations(
    tmp_path: Path, extended: SearchSpace, objective: ObjectiveFile
) -> None:
    """A study over the conditional space, exported as a surface, replays: the seeds' points
    (speculation with its JSON flag among them) are found by their flags and measure again."""
    from tuner.config import Profile, ReplayConfig, ServerArgs
    from tuner.report.surface import export_surface

    seeds = load_seeds(ROOT / "configs" / "strategic_12.yaml", extended)
    spec = type(seeds[0])("ngram", {**seeds[0].params, "speculative_method": "ngram",
                                    "num_speculative_tokens": 4})  # fmt: skip
    first = StudyPaths.create("rec", tmp_path)
    StudyRunner(paths=first, space=extended, seeds=(seeds[0], spec), objective=objective,
                profile=fake_profile(), settings=RunSettings(n_trials=2, sampler_seed=1)).run()  # fmt: skip
    surface = export_surface(load_study(first), first.root)
    (tmp_path / "surface.json").write_text(json.dumps(surface.to_json()))
    replay = Profile(
        name="replay",
        server=ServerArgs(model="fake-model", max_model_len=4096),
        deployer=ReplayConfig(surface=tmp_path / "surface.json", time_scale=0.0),
    )
    again = StudyPaths.create("again", tmp_path)
    StudyRunner(paths=again, space=extended, seeds=(seeds[0], spec), objective=objective,
                profile=replay, settings=RunSettings(n_trials=2, sampler_seed=1)).run()  # fmt: skip
    trials = load_study(again).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    assert trials[1].params["num_speculative_tokens"] == 4
