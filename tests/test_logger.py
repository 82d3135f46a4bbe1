"""logger: rows to stdout/log.txt/progress.csv, weighted means, the log dir choice."""

import csv
import os
import tempfile

import torch as th

from guided_diffusion import logger


def test_rows_go_to_csv_and_log_txt(tmp_path, capsys):
    logger.configure(dir=str(tmp_path))
    logger.logkv("step", 1)
    logger.logkv_mean("loss", 2.0)
    logger.logkv_mean("loss", 4.0)
    row = logger.dumpkvs()
    assert row == {"step": 1, "loss": 3.0}
    logger.log("hello", 5)
    text = (tmp_path / "log.txt").read_text()
    assert "| loss | 3" in text and "hello 5" in text
    assert "| step | 1" in capsys.readouterr().out
    assert logger.get_dir() == str(tmp_path)


def test_new_key_rewrites_csv_header_and_pads_old_rows(tmp_path):
    logger.configure(dir=str(tmp_path), format_strs=["csv"])
    logger.logkv("a", 1)
    logger.dumpkvs()
    logger.logkv("a", 2)
    logger.logkv("b", 3)
    logger.dumpkvs()
    with open(tmp_path / "progress.csv") as f:
        rows = list(csv.reader(f))
    assert rows == [["a", "b"], ["1", ""], ["2", "3"]]


def test_weighted_means_and_tensors_and_empty_quartiles(tmp_path):
    logger.configure(dir=str(tmp_path), format_strs=[])
    logger.logkv_mean("x", th.tensor(1.0), n=3)
    logger.logkv_mean("x", 5.0, n=1)
    logger.logkv_mean("never", th.tensor(7.0), n=th.tensor(0.0))
    row = logger.dumpkvs()
    assert row == {"x": 2.0}  # (3*1 + 5) / 4; a key with no samples is left out
    assert logger.dumpkvs() == {}  # values are cleared after a dump


def test_log_dir_from_env_else_dated_temp_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_LOGDIR", str(tmp_path / "run"))
    logger.configure(format_strs=[])
    assert logger.get_dir() == str(tmp_path / "run") and os.path.isdir(tmp_path / "run")
    monkeypatch.delenv("OPENAI_LOGDIR")
    logger.configure(format_strs=[])
    made = logger.get_dir()
    assert os.path.dirname(made) == tempfile.gettempdir() and os.path.basename(made).startswith("openai-")
    os.rmdir(made)
