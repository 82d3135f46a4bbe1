"""Fixtures shared by the test files: a session-wide Fashion-MNIST export, the subprocess runners of
_train_helpers.py, and keeping in-process torch work on one thread. The report's header says how the
pinned fixtures are compared here (fixture_compare.py)."""

from pathlib import Path

import pytest
import torch as th

import _train_helpers
import fixture_compare

FIXTURE_FOLDERS = sorted(path.parent for path in (Path(__file__).parent / "fixtures").glob("*/provenance.json"))


def pytest_report_header():
    return [f"fixtures/{folder.name}: {'bit for bit' if exact else 'within the computation error bound'} ({why})"
            for folder in FIXTURE_FOLDERS for exact, why in [fixture_compare.comparison(folder / "provenance.json")]]


def pytest_sessionfinish():
    _train_helpers.WARM.close()


@pytest.fixture(scope="session")
def fashion_dir(tmp_path_factory):
    """60 Fashion-MNIST training images per class (600 files, 32x32 RGB, class-prefixed names)."""
    return _train_helpers.export_fashion(tmp_path_factory.mktemp("fashion"))


@pytest.fixture(scope="session")
def run_python():
    """run_python(args, ranks=1, env=None, check=True, timeout=TIMEOUT) -> CompletedProcess."""
    return _train_helpers.run_python


@pytest.fixture(scope="session")
def run_script():
    """run_script(name, flags, log_dir, ranks=1, check=True, timeout=TIMEOUT) -> CompletedProcess."""
    return _train_helpers.run_script


@pytest.fixture(scope="module")
def one_torch_thread():
    """In-process torch work on one thread for the module: on a busy 2-core machine two threads are
    many times slower. Use with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    threads = th.get_num_threads()
    th.set_num_threads(1)
    yield
    th.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory):
    """{"data", "model", "ema", "classifier"}: TINY_RUN trained 2 steps by image_train.py and
    TINY_RUN_CLASSIFIER 2 steps by classifier_train.py on 8 greyscale images, each log dir with its
    train_config.json; "model" is model000002.pt, "ema" ema_0.9_000002.pt, "classifier" model000002.pt."""
    root = tmp_path_factory.mktemp("tiny_runs")
    data = _train_helpers.write_grey_images(root / "data")
    common = dict(data_dir=data, batch_size=2, save_interval=2)
    _train_helpers.run_script("image_train", dict(_train_helpers.TINY_RUN, **common, max_steps=2, ema_rate=0.9),
                              root / "model")
    _train_helpers.run_script("classifier_train", dict(_train_helpers.TINY_RUN_CLASSIFIER, **common, iterations=2),
                              root / "classifier")
    return {"data": data, "model": root / "model" / "model000002.pt", "ema": root / "model" / "ema_0.9_000002.pt",
            "classifier": root / "classifier" / "model000002.pt"}
