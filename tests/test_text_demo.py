"""The text demo (scripts/text_demo.sh) and its inpainting sequel (scripts/text_inpaint_demo.sh) end to end at a
tiny size: every stage runs, and the judge's tables have the demo's shape (500 -> 50 samples: 40 seen, 10 unseen)."""

import json
import os
import subprocess

import pytest
import torch

from _train_helpers import REPO, TIMEOUT
from test_demo import judge_module

pytestmark = pytest.mark.slow


def run_demo(script, env):
    result = subprocess.run(["bash", str(REPO / "scripts" / script)], env={**os.environ, **env}, cwd=REPO,
                            capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def test_text_demo_and_inpainting_demo_run_end_to_end(tmp_path):
    if not os.path.isdir("/usr/share/datasets/fashion-mnist"):
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
    judge = tmp_path / "judge.pt"  # an untrained judge: the test checks the plumbing, not the scores
    torch.save(dict(image_size=28, test_accuracy=0.0, state_dict=judge_module.Judge(28).state_dict()), judge)
    run = tmp_path / "run"
    env = dict(RUN=str(run), DATA=str(tmp_path / "data"), JUDGE_CACHE=str(judge), STEPS="2", SAMPLES="50",
               PER_CLASS="4", SAMPLER_FLAGS="--sampler ddim --timestep_respacing 2", OMP_NUM_THREADS="1")
    out = run_demo("text_demo.sh", env)
    assert "judging garment" in out and (run / "conditional" / "prompts_grid.png").is_file()
    scores = json.loads((run / "accuracy.json").read_text())
    assert sorted(os.path.basename(k).split("_")[0] for k in scores) == ["samples", "samples"]
    for runs in scores.values():
        assert (runs["all"]["n"], runs["seen"]["n"], runs["unseen"]["n"]) == (50, 40, 10)
        assert set(runs["all"]) == {"n", "garment", "garment_colour", "background_colour", "all_three"}
    empty = json.loads((run / "accuracy_empty_caption.json").read_text())
    assert [v["all"]["n"] for v in empty.values()] == [50]
    assert (run / "prompts.txt").read_text().count("\n") == 50
    with pytest.raises(subprocess.CalledProcessError):  # an existing run is not overwritten unasked
        subprocess.run(["bash", str(REPO / "scripts" / "text_demo.sh")], env={**os.environ, **env}, cwd=REPO,
                       check=True, capture_output=True, timeout=TIMEOUT)

    run_demo("text_inpaint_demo.sh", dict(env, STEPS="2", PER_PROMPT="1", EDIT_STEPS="2"))
    inpaint = json.loads((run / "inpaint" / "accuracy.json").read_text())
    assert sorted(k.split(os.sep)[-2] for k in inpaint) == ["glide", "repaint"]
    for scores in inpaint.values():
        assert scores["n"] == 50 and scores["known_max_diff"] <= 1  # both methods keep the known pixels
