"""Fixtures for the image tests: a real docker-registry, scratch checkouts, one shared test store.

Cost control (CI has 2 cores): the Debian base (15 MB of .debs) and each profile's layers are built
once per session into a session store. Most tests use the `small` profile (the real base + a wheel
lock of pyyaml only); only the end-to-end test builds the full local profile with torch.
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Iterator

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "python"))

from image_helpers import REPO, SMALL_REQS, Registry, load_config, make_checkout, small_config  # noqa: E402
from minibuild.store import Store  # noqa: E402

# Without the real tools these tests cannot run at all (./dev installs them): say so, collect nothing.
MISSING = [t for t in ("docker-registry", "skopeo", "umoci") if not shutil.which(t)]
if MISSING:
    collect_ignore_glob = ["test_*.py"]
    print(f"tests/image skipped: {', '.join(MISSING)} not installed (./dev installs them)", file=sys.stderr)


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    reg = Registry(tmp_path / "registry")
    yield reg
    reg.stop()


@pytest.fixture
def auth_registry(tmp_path: Path) -> Iterator[Registry]:
    reg = Registry(tmp_path / "registry-auth", users={"builder": "s3cret-pw"})
    yield reg
    reg.stop()


@pytest.fixture(scope="session")
def small_lock(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real pylock (resolved against PyPI: URLs, sizes, hashes) of three small wheels, once per session."""
    from minibuild.image.wheels import lock_wheels

    d = tmp_path_factory.mktemp("small-lock")
    (d / "small.in").write_text(SMALL_REQS)
    local = load_config(REPO / "build_config.yaml").images.profiles["local"]
    lock_wheels(d / "small.in", d / "pylock.small.toml", local.target, "https://pypi.org/simple", [])
    return d / "pylock.small.toml"


@pytest.fixture(scope="session")
def session_store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    return Store(tmp_path_factory.mktemp("image-store"))


@pytest.fixture(scope="session")
def small_build(tmp_path_factory: pytest.TempPathFactory, session_store: Store, small_lock: Path):
    """(cfg, results) of `build_images(stage=all)` with the small profile in a scratch checkout."""
    from minibuild.image import build_images

    checkout = make_checkout(tmp_path_factory.mktemp("checkout") / "repo")
    cfg = small_config(checkout, small_lock)
    os.environ.pop("MINI_VLLM_IMAGE_PROFILE", None)
    return cfg, build_images(cfg, stage="all", store=session_store)
