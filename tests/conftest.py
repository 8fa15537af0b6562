"""Shared fixtures. The real ISBI 2012 data is read from ../shared/data/isbi2012 (never copied here).

With CI=true a missing data set fails the run loudly instead of silently skipping the tests that
need it.
"""
import collections
import os
import pathlib
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import unet_medical  # noqa: E402,F401  (sets TF_USE_LEGACY_KERAS before any test imports TensorFlow)

ISBI_FILES = ("train-volume.tif", "train-labels.tif", "test-volume.tif")


def isbi_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("ISBI_DATA_DIR", REPO.parent / "shared" / "data" / "isbi2012"))


@pytest.hookimpl(tryfirst=True)
def pytest_xdist_auto_num_workers(config) -> int | None:
    """`-n auto` (pyproject.toml) starts one worker more than the cores this process may use. Most slow
    tests wait on a main.py subprocess whose start-up and tracing run on one thread: at one worker per core
    the cores were busy 82 % of the time, at one more 90 % (the eight slowest files on AMD EPYC Zen 4,
    2 cores: 484 s -> 403 s). PYTEST_XDIST_AUTO_NUM_WORKERS still wins (None: xdist's own rule)."""
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return None
    return len(os.sched_getaffinity(0)) + 1


# The longest files, longest first: worker seconds from `pytest --durations` on AMD EPYC Zen 4, 2 cores
# (2026-12-06, after that day's cuts): recipes ~185, dockerfile ~145, study ~100, cv ~90, training ~90,
# volume_resample ~110, compare_nvidia ~80, distributed ~80. Ordering only: a stale list costs minutes, never a result.
LONG_FILES = ("test_recipes.py", "test_dockerfile.py", "test_volume_resample.py", "test_study.py", "test_cv.py",
              "test_training.py", "test_compare_nvidia.py", "test_distributed.py")


def pytest_collection_modifyitems(config, items) -> None:
    """The longest files first (LONG_FILES, then files by their count of slow tests), each file's tests in
    their own order. `--dist loadfile` hands out whole files in collection order, and a long file started
    last runs alone on one core at the end; starting the long ones first (the longest-job-first rule) lets
    the many short files fill the gaps instead."""
    slow = collections.Counter(item.path for item in items if item.get_closest_marker("slow"))
    first_seen: dict[pathlib.Path, int] = {}
    for index, item in enumerate(items):
        first_seen.setdefault(item.path, index)

    def rank(item) -> tuple[int, int, int]:
        long_rank = LONG_FILES.index(item.path.name) if item.path.name in LONG_FILES else len(LONG_FILES)
        return long_rank, -slow[item.path], first_seen[item.path]

    items.sort(key=rank)


@pytest.fixture(scope="session")
def isbi_data_dir() -> pathlib.Path:
    """Directory holding the three ISBI 2012 TIFF stacks."""
    path = isbi_dir()
    missing = [f for f in ISBI_FILES if not (path / f).is_file()]
    if missing:
        msg = f"ISBI 2012 data missing in {path}: {', '.join(missing)} (set ISBI_DATA_DIR)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return path


@pytest.fixture(autouse=True)
def float32_keras_policy_after_each_test():
    """The Keras dtype policy is process-wide and --precision auto sets mixed_bfloat16 on CPUs with
    AVX512_BF16/AMX: reset it after every test so a later test building a model directly gets float32."""
    yield
    if "tf_keras" in sys.modules:
        sys.modules["tf_keras"].mixed_precision.set_global_policy("float32")
