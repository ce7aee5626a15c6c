"""Every experiment composes under every profile and builds what it runs, without fitting.

In the style of lightning-hydra-template's ``test_configs.py``: composition errors (a missing
group, a profile file naming an unknown key, a pipeline that does not validate) show up here in
seconds, not after minutes of training.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from entangle.system import System

CONF = Path(__file__).resolve().parent.parent / "conf"
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
PROFILES = sorted(p.stem for p in (CONF / "profile").glob("*.yaml"))


def test_the_config_tree_is_what_the_tests_cover():
    assert len(EXPERIMENTS) >= 13 and PROFILES == ["default", "paper", "paper_epochs", "paper_grid", "quick"]
    # every profile patch belongs to an experiment or pipeline that exists, for a profile that exists
    for group, owners in (("experiment_profile", EXPERIMENTS),
                          ("pipeline_profile", [p.stem for p in (CONF / "pipeline").glob("*.yaml")])):
        for patch in (CONF / group).glob("*/*.yaml"):
            assert patch.parent.name in owners, f"{patch}: no {patch.parent.name!r} to patch"
            assert patch.stem in PROFILES, f"{patch}: no profile {patch.stem!r}"


def _build(name: str, cfg) -> int:
    """Build the systems (or other objects) the experiment would run; returns how many."""
    if cfg.get("pipeline") and cfg.pipeline.get("nodes"):
        from entangle.study import Study
        study = Study.from_config(cfg)
        for system in study.systems.values():
            assert system.keys(study.seeds[0])        # keys need no fitting
        return len(study.systems)
    if name == "toy_decomposition":
        from entangle.tasks.toy_decomposition import apply_changes
        for toy_name, toy in cfg.toys.items():
            old = System.from_config(toy.pipeline)
            new = apply_changes(OmegaConf.to_container(toy.pipeline), OmegaConf.to_container(toy.changes), toy_name)
            assert old.keys(0) != new.keys(0)
        instantiate(cfg.reference)
        return 2 * len(cfg.toys)
    if name == "paper_toys":
        from entangle.tasks.paper_toys import knob_systems
        n = 0
        for exp_name, exp in cfg.experiments.items():
            values, systems, changed = knob_systems(exp, cfg, exp_name)
            assert len(systems) == len(values) >= 2 and changed
            n += len(systems)
        instantiate(cfg.reference)
        return n
    if name in ("make_world", "stereo_real"):
        from entangle.data.world import WorldConfig
        WorldConfig.from_dict(cfg.data.world)
        if name == "stereo_real":
            from entangle.tasks.stereo_real import stereo_methods
            assert stereo_methods(cfg)
        return 1
    if name == "failure_directions_world":
        instantiate(cfg.world.source)
        return 1
    assert name in ("check_dataset", "summarize"), f"{name}: nothing to build?"
    return 0


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes_and_builds(compose_cfg, tmp_path, name, profile):
    extra = {"check_dataset": ["data.root=somewhere"], "summarize": ["sweep_dir=somewhere"]}.get(name, [])
    cfg = compose_cfg(f"experiment={name}", f"profile={profile}", f"store.root={tmp_path / 's'}", *extra)
    assert cfg.profile == profile and cfg.task
    OmegaConf.to_container(cfg, resolve=True)                  # every interpolation resolves
    _build(name, cfg)
    assert not (tmp_path / "s").exists()                       # nothing was fitted


def test_profiles_are_hydra_config_and_the_command_line_wins(compose_cfg, tmp_path):
    quick = compose_cfg("experiment=toy_pipeline", "profile=quick")
    assert quick.pipeline.nodes.data.sizes.train == 500        # pipeline_profile/toy/quick.yaml
    over = compose_cfg("experiment=toy_pipeline", "profile=quick", "pipeline.nodes.data.sizes.train=77")
    assert over.pipeline.nodes.data.sizes.train == 77 and over.pipeline.nodes.data.sizes.test == 1000
    assert compose_cfg("experiment=stress", "profile=quick").seeds == [0, 1, 2]
    assert compose_cfg("experiment=stress", "profile=quick", "seeds=[5,6]").seeds == [5, 6]
    # analysis options follow the pipeline: the toy pipeline's, and its fixed data seed for stress
    toy = compose_cfg("experiment=stress", "pipeline=toy", "profile=quick")
    assert toy.analysis.images == [] and toy.pipeline.nodes.data.data_seed == 0
    assert compose_cfg("experiment=toy_pipeline").pipeline.nodes.data.get("data_seed") is None


def test_an_experiment_of_a_users_own_needs_no_profile_files(tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    own = tmp_path / "conf" / "experiment"
    own.mkdir(parents=True)
    (own / "mine.yaml").write_text("# @package _global_\ndefaults:\n  - override /pipeline: toy\n"
                                   "task: entangle.tasks.study.run\nchange: {node: upstream, set: {estimator: {alpha: 2.0}}}\n")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=["experiment=mine", "profile=quick",
                                           f"hydra.searchpath=[file://{tmp_path / 'conf'}]"])
    assert cfg.task == "entangle.tasks.study.run" and cfg.pipeline.nodes.data.sizes.train == 500
