"""The entry points as a researcher runs them: `python -m stn.train ...` in a subprocess, on a
small subset of real MNIST."""

import json
import re
from pathlib import Path

import pytest
import torch
from hydra.core.hydra_config import HydraConfig
from PIL import Image

from stn.errors import UserError
from stn.training import train

from .conftest import SMALL, compose_config, eval_command, multirun, run, run_rejected, small_run


def test_train_in_process_returns_metrics(cfg_train):
    HydraConfig().set_config(cfg_train)
    metrics = train(cfg_train)
    assert 0.0 <= metrics["test/acc"] <= 1.0
    assert {"train/loss", "train/acc", "val/acc", "val/acc_best", "test/loss"} <= set(metrics)


@pytest.mark.slow
def test_train_subprocess_ends_with_checkpoint_metrics_and_events(tmp_path: Path, mnist_dir: Path):
    run_dir = tmp_path / "run"
    process = run("stn.train", *SMALL, "trainer.max_epochs=2", f"hydra.run.dir={run_dir}", data_dir=mnist_dir)
    console = process.stdout + process.stderr
    # Lightning's lines once each (its own console handler and Hydra's would show each twice)
    assert console.count("Seed set to 0") == 1 and console.count("GPU available: ") == 1
    assert (run_dir / "train.log").read_text().count("Seed set to 0") == 1
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert list((run_dir / "checkpoints").glob("epoch_*.ckpt"))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["test/acc"] > 0.3  # 2 small epochs of real MNIST already beat chance by far
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert "val/acc" in (run_dir / "csv" / "metrics.csv").read_text().splitlines()[0]  # a CSV beside it
    assert (run_dir / ".hydra" / "config.yaml").is_file()

    # resume from the last checkpoint for one more epoch, then test the checkpoint with stn.eval
    resumed = tmp_path / "resumed"
    run(
        "stn.train",
        *SMALL,
        "trainer.max_epochs=3",
        f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}",
        f"hydra.run.dir={resumed}",
        data_dir=mnist_dir,
    )
    state = torch.load(resumed / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert state["epoch"] == 2  # epochs 0 and 1 from the first run, epoch 2 after resuming

    output = eval_command(
        resumed / "checkpoints" / "last.ckpt", run_dir=tmp_path / "eval", data_dir=mnist_dir
    )
    assert "test/acc" in output


@pytest.mark.slow
def test_bad_config_stops_with_one_sentence(tmp_path: Path, mnist_dir: Path):
    run_rejected(
        "stn.train", "model.localization.depth=7", f"hydra.run.dir={tmp_path}", data_dir=mnist_dir,
        message="model.localization.depth=7 is out of range: allowed 1..3",
    )  # fmt: skip


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_gpu_trainer_without_gpu_is_one_sentence(tmp_path: Path, mnist_dir: Path):
    run_rejected(
        "stn.train", "trainer=gpu", f"hydra.run.dir={tmp_path}", data_dir=mnist_dir,
        message="asks for a CUDA GPU, but this machine has none",
    )  # fmt: skip


@pytest.mark.slow
def test_missing_data_stops_with_the_path(tmp_path: Path):
    empty = tmp_path / "empty"
    run_rejected(
        "stn.train", *SMALL, "data.download=false", f"hydra.run.dir={tmp_path / 'run'}", data_dir=empty,
        message=f"MNIST not found in {empty / 'MNIST' / 'raw'}",
    )  # fmt: skip


@pytest.mark.slow
def test_multirun_makes_one_folder_per_job_and_survives_a_failing_job(tmp_path: Path, mnist_dir: Path):
    sweep_dir = tmp_path / "sweep"
    process, jobs = multirun(
        *SMALL, "model.localization.depth=1,2,9", sweep=sweep_dir, data_dir=mnist_dir, check=False
    )
    # each job's folder is named by its number and the key the sweep varies (not the fixed ones)
    assert [job.name for job in jobs] == [
        f"{n}_model.localization.depth={d}" for n, d in enumerate((1, 2, 9))
    ]
    for job in jobs[:2]:
        assert (job / "metrics.json").is_file(), process.stderr[-3000:]
        assert (job / "checkpoints" / "last.ckpt").is_file()
        assert "Finished: val/acc_best " in (job / "train.log").read_text().splitlines()[-1]
    # the third job is rejected at start and reported; the sweep as a whole fails
    assert process.returncode != 0
    assert "model.localization.depth=9 is out of range" in (jobs[2] / "train.log").read_text()
    assert not (jobs[2] / "config_tree.log").exists()  # refused before the config tree is printed
    assert not (jobs[2] / "metrics.json").exists()


@pytest.mark.slow
@pytest.mark.parametrize("debug", ["fdr", "limit", "overfit", "profiler"])
def test_debug_configs_run(debug: str, tmp_path: Path, mnist_dir: Path):
    run_dir = tmp_path / debug
    run(
        "stn.train", f"debug={debug}", "data.train_subset=640", "data.test_subset=256",
        f"hydra.run.dir={run_dir}", data_dir=mnist_dir,
    )  # fmt: skip
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert "test/acc" in metrics
    if debug == "overfit":  # 3 batches, 100 epochs: far above chance (10%) if the model learns at all
        assert metrics["train/acc"] > 0.5
    if debug == "profiler":
        assert "run_training_epoch" in (run_dir / "fit-profile.txt").read_text()


@pytest.mark.slow
def test_distorted_variant_trains_end_to_end(tmp_path: Path, mnist_dir: Path):
    run_dir = tmp_path / "cluttered"
    run(
        "stn.train",
        *SMALL,
        "data=mnist_cluttered",
        "model=stn_tps",
        f"hydra.run.dir={run_dir}",
        data_dir=mnist_dir,
    )
    assert "test/acc" in json.loads((run_dir / "metrics.json").read_text())
    last = run_dir / "checkpoints" / "last.ckpt"
    assert "test/acc" in eval_command(
        last, "data=mnist_cluttered", run_dir=tmp_path / "eval", data_dir=mnist_dir
    )


@pytest.mark.slow
def test_unknown_variant_lists_the_valid_ones(tmp_path: Path, mnist_dir: Path):
    process = run(
        "stn.train", "data=mnist_upside_down", f"hydra.run.dir={tmp_path}", data_dir=mnist_dir, check=False
    )
    assert process.returncode != 0 and "Traceback" not in process.stderr
    # one sentence, not Hydra's search-path listing
    assert process.stderr.startswith("error: data=mnist_upside_down is not an option of the data group")
    assert len(process.stderr.strip().splitlines()) == 1
    for variant in ("mnist_rot", "mnist_rts", "mnist_proj", "mnist_elastic", "mnist_cluttered"):
        assert variant in process.stderr


@pytest.mark.slow
def test_inverted_range_is_one_sentence(tmp_path: Path, mnist_dir: Path):
    run_rejected(
        "stn.train", "data=mnist_rts", "data.distortion.degrees=[45,-45]", f"hydra.run.dir={tmp_path}",
        data_dir=mnist_dir, message="data.distortion.degrees=[45, -45] is inverted: min must be <= max",
    )  # fmt: skip


@pytest.mark.slow
def test_paper_grid_and_table(tmp_path: Path, mnist_dir: Path):
    sweep_dir = tmp_path / "grid"
    run(
        "stn.train", "--multirun", "experiment=paper", *SMALL, "data=mnist_rot", "model=cnn,stn",
        "data.batch_size=64", f"hydra.sweep.dir={sweep_dir}", data_dir=mnist_dir,
    )  # fmt: skip
    table = run("stn.paper_table", str(sweep_dir), "--out", str(tmp_path / "table"), data_dir=mnist_dir)
    markdown = (tmp_path / "table" / "paper_table.md").read_text()
    assert markdown in table.stdout
    rows = {line.split(" | ")[0].strip("| "): line for line in markdown.splitlines() if line.startswith("| ")}
    for model, paper_error in (("CNN", "1.2"), ("ST-CNN Aff", "0.7")):
        assert "(n=1)" in rows[model].split(" | ")[1] and f"({paper_error})" in rows[model]
    csv_rows = (tmp_path / "table" / "paper_table.csv").read_text().splitlines()
    assert csv_rows[0].startswith("model,R ours,RTS ours") and len(csv_rows) == 3
    # input vs the STN's output: 12 digits of 28+2 px, a label column of 96 px (input, ST-CNN Aff)
    assert Image.open(tmp_path / "table" / "paper_R.png").size == (96 + 12 * 30 + 2, 2 * 30 + 2)
    empty = run("stn.paper_table", str(tmp_path / "table"), data_dir=mnist_dir, check=False)
    assert empty.returncode != 0 and "no finished run on a distorted variant" in empty.stderr
    # the same runs as error against training length: one column per length, the paper's error
    length = tmp_path / "length"
    run("benchmarks.paper_length", "--report-only", "--runs", str(sweep_dir), "--lengths", "1",
        "--out", str(length), data_dir=mnist_dir)  # fmt: skip
    lines = (length / "error_vs_length.md").read_text().splitlines()
    assert "| model | variant | paper | 1 ep |" in lines
    # a row per model and recipe: the overrides beyond the grid's (here the small subset) name it
    row = next(line for line in lines if line.startswith("| ST-CNN Aff data.train_subset=2048 "))
    assert " | R | 0.7 | " in row and "(n=1)" in row
    assert len((length / "error_vs_length.csv").read_text().splitlines()) == 3
    assert Image.open(length / "error_vs_length.png").size[0] > 300


@pytest.mark.slow
def test_the_inverse_compositional_stn_trains_end_to_end(tmp_path: Path, mnist_dir: Path):
    run_dir = tmp_path / "run"
    run("stn.train", *SMALL, "model=ic_stn", "model.transformer.recurrences=2", f"hydra.run.dir={run_dir}",
        data_dir=mnist_dir)  # fmt: skip
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["test/acc"] > 0.3  # one epoch of 2048 images, from chance (0.1)
    assert (
        "Parameters: transformer 5,520, classifier 21,840, total 27,360"
        in (run_dir / "train.log").read_text()
    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.localization.depth=7"], "model.localization.depth=7 is out of range: allowed 1..3"),
        (
            ["data=mnist_rts", "data.distortion.degrees=[45,-45]"],
            "data.distortion.degrees=[45, -45] is inverted: min must be <= max",
        ),
        (["data.download=false"], "MNIST not found in {empty}"),
    ],
)
def test_bad_values_stop_the_train_function_before_it_trains(
    overrides: list[str], message: str, tmp_path: Path, mnist_dir: Path
):
    empty = tmp_path / "empty"
    cfg = small_run(compose_config("train.yaml", overrides), tmp_path / "run", mnist_dir)
    if "data.download=false" in overrides:
        cfg.data.data_dir = str(empty)
    with pytest.raises(UserError, match=re.escape(message.format(empty=empty / "MNIST" / "raw"))):
        train(cfg)
    assert not list((tmp_path / "run").glob("checkpoints/*.ckpt"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_a_gpu_trainer_without_a_gpu_stops_the_train_function(tmp_path: Path, mnist_dir: Path):
    cfg = small_run(compose_config("train.yaml", ["trainer=gpu"]), tmp_path, mnist_dir)
    cfg.trainer.accelerator = "gpu"
    with pytest.raises(UserError, match="asks for a CUDA GPU, but this machine has none"):
        train(cfg)


def test_the_shared_run_folder_is_what_the_command_leaves(finished_run: Path):
    assert (finished_run / "checkpoints" / "last.ckpt").is_file()
    assert len(list((finished_run / "checkpoints").glob("epoch_*.ckpt"))) == 1
    metrics = json.loads((finished_run / "metrics.json").read_text())
    assert 0 <= metrics["test/acc"] <= 1 and metrics["time/fit_seconds"] > 0
    assert list((finished_run / "tensorboard").glob("events.out.tfevents.*"))
    assert "val/acc" in (finished_run / "csv" / "metrics.csv").read_text().splitlines()[0]
    for record in (".hydra", "run_config"):
        assert (finished_run / record / "config.yaml").is_file()


def test_the_test_loss_is_the_same_at_any_batch_size(mnist_dir: Path):
    from stn.inference.evaluate import evaluate as evaluate_in_process

    losses = {}
    for batch_size in (64, 256, 1000):
        overrides = ["model_name=stn_mnist", "trainer.accelerator=cpu", f"data.batch_size={batch_size}"]
        cfg = compose_config("eval.yaml", [*overrides, "data.test_subset=1000", f"data.data_dir={mnist_dir}"])
        HydraConfig().set_config(cfg)
        losses[batch_size] = evaluate_in_process(cfg)["test/loss"]
    # 1000 images: batches of 64 end in a partial batch of 40, which weighs 40 images, not 64
    assert losses[64] == pytest.approx(losses[1000], rel=1e-5)
    assert losses[256] == pytest.approx(losses[1000], rel=1e-5)


@pytest.mark.slow
def test_tab_completion_works_through_the_console_scripts(tmp_path: Path):
    import os
    import shutil
    import subprocess
    import sys

    script = shutil.which("stn-train", path=str(Path(sys.executable).parent)) or shutil.which("stn-train")
    assert script, "pip install -e . installs the stn-train console script"
    for line, expected in (
        ("stn-train model=", "model=stn_tps"),
        ("stn-train data=mnist_r", "data=mnist_rts"),
    ):
        env = {**os.environ, "COMP_LINE": line}
        process = subprocess.run(
            [script, "-sc", "query=bash"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
        )  # from another folder: the configs are found by the package, not the working directory
        assert expected in process.stdout.split(), process.stderr[-2000:]
    install = subprocess.run([script, "-sc", "install=bash"], cwd=tmp_path, capture_output=True, text=True)
    assert "complete" in install.stdout  # what `eval "$(stn-train -sc install=bash)"` runs


def test_a_run_is_named_by_its_choices_and_overrides():
    from stn.runs.folders import run_label

    assert run_label("mnist", "stn", "model.optimizer.lr=0.003,trainer.max_epochs=5") == (
        "_mnist_stn_model.optimizer.lr=0.003_trainer.max_epochs=5"
    )
    overrides = (
        "data=mnist_rts,model/optimizer=adam,hydra.run.dir=x,paths.log_dir=y,ckpt_path=last,"
        "callbacks.progress_bar.refresh_rate=0,print_config=false,data.batch_size=64"
    )
    assert (
        run_label("mnist_rts", "cnn", overrides) == "_mnist_rts_cnn_model-optimizer=adam_data.batch_size=64"
    )
    assert run_label("", "", "model_name=stn_mnist") == "_model_name=stn_mnist"
    assert len(run_label("mnist", "stn", "x=" + "9" * 500)) <= 97
    # cut between overrides, never inside one; a long float named by 4 significant digits
    long = "model.optimizer.lr=0.003874144220579704,model.localization.depth=2," + "z" * 60 + "=1"
    assert (
        run_label("mnist", "stn", long) == "_mnist_stn_model.optimizer.lr=0.003874_model.localization.depth=2"
    )


def test_a_sweep_job_is_named_by_the_keys_the_sweep_varies():
    from omegaconf import OmegaConf

    from stn.runs.folders import job_label, leave_fixed_keys_out_of_job_names

    assert job_label("data=mnist_rts,model.optimizer.lr=0.003874144220579704,optuna_trial=3,seed=1") == (
        "_data=mnist_rts_model.optimizer.lr=0.003874_seed=1"
    )
    task = [
        "seed=0,1",
        "trainer.max_epochs=2",
        "data=mnist_rts",
        "+note=x",
        "model.optimizer.lr=tag(log, interval(0.001, 0.1))",
    ]
    config = OmegaConf.create(
        {"hydra": {"overrides": {"task": task, "hydra": ["hydra/launcher=joblib"]},
                   "job": {"config": {"override_dirname": {"exclude_keys": ["old"]}}}}}
    )  # fmt: skip
    leave_fixed_keys_out_of_job_names(config)
    assert list(config.hydra.overrides.hydra) == [
        "hydra/launcher=joblib",
        "hydra.job.config.override_dirname.exclude_keys=['old','trainer.max_epochs','data','note']",
    ]


@pytest.mark.slow
def test_each_task_has_its_own_root_and_a_refused_start_leaves_no_folder(tmp_path: Path, mnist_dir: Path):
    import os
    import subprocess

    from .conftest import ROOT, cli_command

    env = {**os.environ, "STN_ROOT": str(tmp_path), "STN_DATA_DIR": str(mnist_dir)}

    def start(module: str, *overrides: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            cli_command(module, *overrides), cwd=ROOT, env=env, capture_output=True, text=True
        )

    refused = start("stn.train", "model.localization.depth=7")
    assert refused.returncode == 1 and not (tmp_path / "outputs").exists()
    assert start("stn.train", "debug=fdr", "model=cnn", "data.train_subset=256").returncode == 0
    assert start("stn.eval", "model_name=stn_mnist", "data.test_subset=256").returncode == 0
    (debug_run,) = (tmp_path / "outputs" / "debug" / "runs").iterdir()
    assert debug_run.name.endswith("_mnist_cnn_data.train_subset=256_debug=fdr")
    (eval_run,) = (tmp_path / "outputs" / "eval" / "runs").iterdir()
    assert "model_name=stn_mnist" in eval_run.name
    assert sorted(p.name for p in (tmp_path / "outputs").iterdir()) == ["debug", "eval"]


def test_each_epoch_is_one_line_of_the_runs_log(tmp_path: Path, mnist_dir: Path, caplog):
    """What train.log holds of an epoch: its validation accuracy and loss and its time."""
    import logging
    import re

    from .conftest import TINY, train_in_process

    with caplog.at_level(logging.INFO, logger="stn.models.lit_module"):
        train_in_process([*TINY, "trainer.max_epochs=2"], tmp_path / "run", mnist_dir)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch ")]
    assert len(lines) == 2  # not the sanity check's
    assert re.fullmatch(r"epoch 1: val/acc 0\.\d{4}, val/loss \d+\.\d{4}, \d+ s", lines[1])
