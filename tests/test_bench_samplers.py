"""benchmarks/bench_samplers.py builds the model of --preset, with the flags given on the command line winning."""
from _train_helpers import run_python


def bench(*flags):
    return run_python(["benchmarks/bench_samplers.py", "--runs", "ddpm:2,dpm++2m-sde:2", "--batch_size", "2",
                       "--rounds", "1", "--device", "cpu", *flags]).stdout


def test_the_demo_preset_by_default_and_a_given_flag_changes_it():
    assert "model: demo, 1.19 M parameters" in bench()  # the quickstart's learned-sigma UNet
    assert "model: demo, 4.75 M parameters" in bench("--num_channels", "64")  # twice the width: ~4x


def test_every_run_prints_its_counted_evaluations():
    lines = [line for line in bench().splitlines() if "NFE" in line]
    assert [line.split()[0] for line in lines] == ["ddpm", "dpm++2m-sde"]
    assert all(" 2 NFE" in line for line in lines)


def test_an_unknown_preset_is_refused_by_name():
    done = run_python(["benchmarks/bench_samplers.py", "--preset", "adm63"], check=False)
    assert done.returncode != 0 and "--preset: 'adm63' is not one of demo, adm64_cond" in done.stderr
