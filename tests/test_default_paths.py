"""Every experiment's default-profile code path runs in some test, at tiny sizes.

Most profiles differ from ``quick`` only in sizes (data, epochs, seeds, widths): the quick-profile
test named in ``COVERED`` then runs the default's and the paper's code path. Where a profile
switches something on that quick leaves off (the flip directions of failure_directions, the
case study without its decomposition, the bug-free Defuse setting), ``TINY`` runs that profile
here with the quick profile's sizes and checks what the switched-on branch reports. A new
experiment, or a new switch in a profile, fails here until it is given one or the other.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from entangle.cli import run

TESTS = Path(__file__).resolve().parent
CONF = TESTS.parent / "conf"
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
#: what an experiment needs besides its profile to compose at all
REQUIRED = {"check_dataset": ["data.root=somewhere"], "summarize": ["sweep_dir=somewhere"]}

#: leaf keys that only say how much is done (data, epochs, seeds, widths, counts of seeds): the
#: profiles set them, and a run takes the same code path whatever their values
SIZES = {"seeds", "epochs", "epochs_2d", "epochs_3d", "steps", "evals", "batch_size", "patience",
         "n", "n_scenes", "n_probe", "n_add", "n_label", "n_eval", "copies", "k", "Cs",
         "matched_draws", "severities", "values", "hidden", "width", "width_2d", "width_3d", "height",
         "image_shape", "figure_scenes", "world_scenes", "ensemble_size", "reference_seeds",
         "decompose_seeds"}
#: tables of sizes (every entry is one)
SIZE_TABLES = {"sizes", "fractions", "limits"}
#: switches the quick profile turns off for speed, each run by a test of its own
ELSEWHERE = {"disk_cache": "test_street_digits.py::test_source_keeps_rendered_splits_on_disk"}

#: experiments whose profiles differ from quick only in sizes -> the quick-profile test that runs
#: their code path (check_dataset and summarize have no profile files at all)
COVERED = {
    "check_dataset": "test_checks.py::test_check_dataset_experiment_writes_the_report",
    "summarize": "test_sweeps.py::test_multirun_records_failure_and_summarize_lists_it",
    "toy_pipeline": "test_toy_pipeline.py::test_report_contract_flag_and_store_reuse",
    "instability": "test_mitigation.py::test_experiment_quick_report_contract",
    "interventions": "test_interventions.py::test_interventions_experiment_report",
    "make_world": "test_world.py::test_make_world_experiment_writes_the_layout_and_a_report",
    "paper_toys": "test_paper_toys.py::test_each_experiment_runs_end_to_end_quick",
    "stereo_real": "test_classical_stereo.py::test_stereo_real_reports_middlebury_and_world_per_distance",
    "stress": "test_stress.py::test_experiment_quick_and_toy_subpopulations_only",
    "toy_decomposition": "test_decompose_toys.py::test_toy_decomposition_report",
}

#: experiments run here at quick's sizes with their default profile's switches -> what the run
#: checks, and overrides beyond quick's sizes
TINY = {
    # the flip directions of a clean-label vs a buggy-label classifier, with their figures
    "failure_directions": [],
    # its quick test renders 30 full-size scenes and is slow-marked: here the case study's quick
    # world (24 small scenes, rendered once for both)
    "failure_directions_world": ["world.source.n_scenes=24", "++world.source.world.camera.height=96",
                                 "++world.source.world.camera.width=320"],
    # no decomposition, no `large` split, references on the first seed only
    "fixes_that_fail": [],
    # the VAE setting again on the digits without the planted bug (classic.enabled)
    "misclassification_regions": [],
}


def _quick_sizes(name: str) -> list[str]:
    """Overrides setting every size that the quick profile files of experiment ``name`` and of its
    pipeline set (their switches are left at the composed profile's)."""
    experiment = OmegaConf.to_container(OmegaConf.load(CONF / "experiment" / f"{name}.yaml"))
    pipeline = [d["override /pipeline"] for d in experiment.get("defaults", [])
                if isinstance(d, dict) and "override /pipeline" in d]
    files = [CONF / "experiment_profile" / name / "quick.yaml",
             *[CONF / "pipeline_profile" / p / "quick.yaml" for p in pipeline]]
    sizes = {}
    for f in files:
        if f.is_file():
            sizes.update(_flat(OmegaConf.load(f)))
    return [f"++{k}={json.dumps(v)}" for k, v in sizes.items() if _is_size(k)]


def _flat(cfg) -> dict[str, object]:
    """{dotted key: leaf value} of a composed config (unresolved)."""
    def walk(value, path):
        if isinstance(value, dict) and value:
            for k, v in value.items():
                yield from walk(v, f"{path}.{k}" if path else str(k))
        else:
            yield path, value
    return dict(walk(OmegaConf.to_container(cfg, resolve=False), ""))


def _is_size(key: str) -> bool:
    parts = key.split(".")
    return parts[-1] in SIZES or parts[-1] in ELSEWHERE or (len(parts) > 1 and parts[-2] in SIZE_TABLES)


def _switches(cfg, quick) -> dict[str, object]:
    """The keys other than sizes where ``cfg`` differs from the quick profile's config."""
    a, q = _flat(cfg), _flat(quick)
    absent = "<absent>"
    return {k: a.get(k, absent) for k in set(a) | set(q)
            if k != "profile" and not _is_size(k) and a.get(k, absent) != q.get(k, absent)}


def test_every_experiment_is_run_here_or_points_to_its_test():
    assert sorted([*COVERED, *TINY]) == EXPERIMENTS, "give each experiment a TINY run or a COVERED test"
    for where in [*COVERED.values(), *ELSEWHERE.values()]:
        file, name = where.split("::")
        tree = ast.parse((TESTS / file).read_text())
        (fn,) = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name]
        assert "slow" not in ast.unparse(fn.decorator_list), f"{where} is slow-marked: CI does not run it"


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_the_default_and_paper_switches_are_taken_by_a_test(compose_cfg, name):
    """Quick-covered experiments differ from quick only in sizes; a tiny run here keeps every
    switch of the default profile and covers the paper profile's."""
    extra = REQUIRED.get(name, [])
    quick = compose_cfg(f"experiment={name}", "profile=quick", *extra)
    default = _switches(compose_cfg(f"experiment={name}", "profile=default", *extra), quick)
    paper = _switches(compose_cfg(f"experiment={name}", "profile=paper", *extra), quick)
    if name in COVERED:
        assert default == paper == {}, f"{name}: a profile switches {sorted({**default, **paper})}: run it in TINY"
        return
    tiny = _switches(compose_cfg(f"experiment={name}", "profile=default", *_quick_sizes(name), *TINY[name],
                                 *extra), quick)
    assert tiny == default, f"{name}: the tiny overrides change more than sizes"
    assert paper.items() <= tiny.items(), f"{name}: profile=paper switches what no run here takes"


def _check_failure_directions(report):
    flips = report["flips"]
    (entry,) = flips["per_seed"]
    assert flips["changed"] == "data" and "error" not in entry and 0 <= entry["heldout_auroc"] <= 1
    assert 0 <= entry["planted"]["auroc_planted"] <= 1 and entry["attributes"]
    assert {"flips_hist.png", "flips_attributes.png", "flips_gallery.png"} <= set(report["figures"])


def _check_failure_directions_world(report):
    assert report["n_scenes"] == 24 and set(report["classes"]) == {"Car", "Pedestrian"}
    for entry in report["classes"].values():      # 11 or more failures each, 5 needed
        assert "error" not in entry and 0 <= entry["heldout_auroc"] <= 1 and len(entry["attributes"]) == 10


def _check_fixes_that_fail(report):
    assert report["profile"] == "default" and "decomposition" not in report
    for name in ("oracle", "sgbm"):
        assert report["references"][name]["stereo"]["seeds"] == [0]      # reference_seeds: 1
    assert report["gate"]["verdict"]["reference"] == "sgbm" and report["paper"]
    assert set(report["flips"]["churn"]["nodes"]) == {"stereo", "car", "pedestrian"}


def _check_misclassification_regions(report):
    (classic,) = report["classic"]
    assert {r["space"] for r in classic["results"]} == {"vae"}
    assert any(f.startswith("classic/") for f in report["figures"])


CHECKS = {"failure_directions": _check_failure_directions,
          "failure_directions_world": _check_failure_directions_world,
          "fixes_that_fail": _check_fixes_that_fail,
          "misclassification_regions": _check_misclassification_regions}


@pytest.mark.parametrize("name", sorted(TINY))
def test_default_profile_at_tiny_sizes(compose_cfg, tmp_path, name):
    cfg = compose_cfg(f"experiment={name}", "profile=default", *_quick_sizes(name), *TINY[name],
                      f"store.root={tmp_path / 's'}")
    assert cfg.profile == "default"
    run(cfg)
    out = tmp_path / "run"
    report = json.loads((out / "report.json").read_text())
    CHECKS[name](report)
    for f in report.get("figures", []):
        assert (out / f).stat().st_size > 1000, f
    assert (out / "report.html").is_file()
