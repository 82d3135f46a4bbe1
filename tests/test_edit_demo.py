"""scripts/edit_demo.py end to end on a stand-in quickstart run (a tiny 16 px model, untrained judge and
guide classifiers from their caches), and the guide classifier of datasets/fashion_mnist_guide.py."""

import json

import numpy as np
import pytest
import torch as th
from PIL import Image

from _train_helpers import REPO
from guided_diffusion import script_util
from test_demo import load_module
from test_sample_scripts import perturbed

guide_module = load_module("fashion_mnist_guide")
judge_module = load_module("fashion_mnist_judge")
MODEL = dict(image_size=16, image_channels=1, num_channels=32, num_res_blocks=1, channel_mult="1,2",
             attention_resolutions="8", class_cond=True, num_classes=10, class_dropout_prob=0.1,
             noise_schedule="cosine")


def test_guide_classifier_is_another_network_with_the_judges_interface():
    guide, judge = guide_module.guide_net(16), judge_module.Judge(16)
    assert guide(th.zeros(3, 1, 16, 16)).shape == (3, 10)
    assert any(isinstance(m, th.nn.SiLU) for m in guide.modules())
    assert not any(isinstance(m, (th.nn.SiLU, th.nn.AvgPool2d)) for m in judge.modules())
    assert judge_module.predict(guide, np.zeros((2, 16, 16), np.uint8)).shape == (2,)
    with pytest.raises(ValueError, match="divisible by 4"):
        guide_module.guide_net(14)


def test_a_cached_guide_classifier_is_loaded_not_trained(tmp_path):
    saved = guide_module.guide_net(16)
    th.save(dict(image_size=16, test_accuracy=0.5, state_dict=saved.state_dict()), tmp_path / "guide.pt")
    loaded, accuracy = guide_module.load_or_train_guide(str(tmp_path / "guide.pt"), 16)
    assert accuracy == 0.5 and any(isinstance(m, th.nn.SiLU) for m in loaded.modules())
    assert all(th.equal(a, b) for a, b in zip(loaded.state_dict().values(), saved.state_dict().values()))


@pytest.fixture(scope="module")
def stand_in_run(tmp_path_factory):
    """A folder laid out as the quickstart leaves it (model/ema_*.pt, model/train_config.json) with a tiny
    jittered model, and caches of an untrained judge and guide classifier."""
    root = tmp_path_factory.mktemp("edit_demo")
    flags = dict(script_util.model_and_diffusion_defaults(), **MODEL)
    model, _ = script_util.create_model_and_diffusion(**flags)
    (root / "run" / "model").mkdir(parents=True)
    th.save(perturbed(model, 1).state_dict(), root / "run" / "model" / "ema_0.999_000001.pt")
    (root / "run" / "model" / "train_config.json").write_text(json.dumps({"model_flags": flags}))
    for name, net in (("judge", judge_module.Judge(16)), ("guide", guide_module.guide_net(16))):
        th.save(dict(image_size=16, test_accuracy=0.1, state_dict=net.state_dict()), root / f"{name}.pt")
    return root


@pytest.mark.slow
def test_edit_demo_writes_its_panel_grids_and_numbers(stand_in_run, run_python):
    root = stand_in_run
    result = run_python([REPO / "scripts" / "edit_demo.py", "--run", root / "run", "--out", root / "out",
                         "--judge_cache", root / "judge.pt", "--guide_cache", root / "guide.pt"])
    results = json.loads((root / "out" / "results.json").read_text())
    assert results["images"] == 10
    assert set(results["tasks"]) == {"repaint", "dps_super_res", "sdedit_0.6", "null_class", "clean_guided"}
    assert results["tasks"]["repaint"]["known_max_error_uint8"] <= 1
    assert all(0 <= task["accuracy"] <= 1 for name, task in results["tasks"].items() if "accuracy" in task)
    columns = results["panel_columns"]
    assert columns[:3] == ["original", "masked", "repaint"] and "clean_guided" in columns
    with Image.open(root / "out" / "panel.png") as panel:
        assert panel.size == (len(columns) * 18 + 2, 10 * 18 + 2)
    assert (root / "out" / "edit_grid_repaint.png").exists() and "panel.png" in result.stdout
