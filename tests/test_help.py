"""Every script's --help explains every flag: a description and its default."""

import contextlib
import io
import re
import runpy
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
NAMES = ["image_train", "image_sample", "classifier_train", "classifier_sample", "super_res_train",
         "super_res_sample", "image_nll", "sweep", "export", "image_edit", "text_sample",
         "text_train", "unclip_train", "unclip_sample", "clip_train"]


def help_text(path):
    """What `python path --help` prints (run in this process: no interpreter start-up per script)."""
    out = io.StringIO()
    argv = sys.argv
    sys.argv = [str(path), "--help"]
    try:
        with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
            runpy.run_path(str(path), run_name="__main__")
    finally:
        sys.argv = argv
    assert exit_info.value.code in (0, None)
    return out.getvalue()


def flag_entries(text):
    """{"--flag": its help text} from argparse's options listing (wrapped lines joined)."""
    entries, current = {}, None
    for line in text.splitlines():
        match = re.match(r"^  (--\w+)(?: \S+)?(?:  +(.*))?$", line)
        if match:
            current = match.group(1)
            entries[current] = match.group(2) or ""
        elif current and re.match(r"^ {10,}\S", line):
            entries[current] += " " + line.strip()
        else:
            current = None
    return entries


@pytest.mark.parametrize("name", NAMES)
def test_every_flag_has_a_description_and_its_default(name):
    path = SCRIPTS / f"{name}.py"
    entries = flag_entries(help_text(path))
    entries.pop("--help", None)
    assert len(entries) >= 5, f"{name}: no flags found in --help"
    for flag, text in entries.items():
        assert re.search(r"\(default: [^)]*\)$", text), f"{name} {flag}: no default shown in {text!r}"
        description = re.sub(r"\s*\(default: [^)]*\)$", "", text)
        assert len(description.split()) >= 2, f"{name} {flag}: no description"


def test_help_lists_the_new_flags_with_their_meaning():
    text = help_text(SCRIPTS / "image_sample.py")
    entries = flag_entries(text)
    assert "dpm++2m" in entries["--sampler"] and entries["--sampler"].endswith("(default: ddpm)")
    assert entries["--guidance_scale"].endswith("(default: 1.0)")
    assert entries["--image_channels"].endswith("(default: 3)")
    assert entries["--channel_mult"].endswith('(default: "")')
