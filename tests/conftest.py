"""Shared fixtures: a temporary store and Hydra config composition for experiment tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CONF = REPO / "conf"

# Tests run on few cores next to other work: keep torch to one thread for stable timings.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# A test that names no store.root must not write into the user's cache folder.
if "ENTANGLE_STORE" not in os.environ:
    import tempfile
    os.environ["ENTANGLE_STORE"] = tempfile.mkdtemp(prefix="entangle-test-store-")


@pytest.fixture
def store(tmp_path):
    from entangle.store import Store
    return Store(tmp_path / "store")


def _composer(default_dir: Path):
    """compose(*overrides, run_dir=None) -> a composed experiment config writing into run_dir."""
    from hydra import compose, initialize_config_dir

    def _compose(*overrides: str, run_dir: Path | None = None):
        run_dir = run_dir or default_dir / "run"
        from hydra.core.hydra_config import HydraConfig
        from omegaconf import open_dict

        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose("config", overrides=[*overrides, f"output_dir={run_dir}"],
                          return_hydra_config=True)
        # As lightning-hydra-template's tests do: make ${hydra:...} resolvable outside @hydra.main.
        HydraConfig().set_config(cfg)
        with open_dict(cfg):
            del cfg["hydra"]
        return cfg

    return _compose


@pytest.fixture
def compose_cfg(tmp_path):
    """compose_cfg(*overrides) -> a composed experiment config writing into tmp_path/run."""
    return _composer(tmp_path)


@pytest.fixture(scope="module")
def compose_cfg_module(tmp_path_factory):
    """compose_cfg for module-scoped fixtures (one expensive run shared by a module's tests)."""
    return _composer(tmp_path_factory.mktemp("cfg"))
