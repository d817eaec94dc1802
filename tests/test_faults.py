"""Faults and bad input as a researcher meets them: each gets one sentence and an exit code, and
nothing that was written before is lost or overwritten. Small subsets of real MNIST."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from stn.data import MNISTDataError, MNISTDataModule
from stn.errors import ArgumentError, ConfigError, check, check_value, integers, numbers, one_of
from stn.inference.evaluate import evaluate as evaluate_in_process
from stn.runs.folders import new_run_dir
from stn.runs.reading import saved_config
from stn.summarize import load_jobs
from stn.utils.checks import check_config

from .conftest import (
    FINISHED,
    ROOT,
    SMALL,
    assert_one_sentence_error,
    cli_command,
    cli_env,
    compose_config,
    multirun,
    run,
    run_rejected,
)

ONE_EPOCH = FINISHED  # the overrides of the session's finished_run


def train(*overrides: str, run_dir: Path, data_dir: Path, check: bool = True) -> subprocess.CompletedProcess:
    return run(
        "stn.train", *ONE_EPOCH, *overrides, f"hydra.run.dir={run_dir}", data_dir=data_dir, check=check
    )


@pytest.fixture
def interrupted_run(finished_run: Path, tmp_path: Path) -> Path:
    """A copy of the finished run as a kill at an epoch's end leaves it: checkpoints, no metrics.json."""
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    (run_dir / "metrics.json").unlink()
    return run_dir


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _model_choice(folder: Path) -> str:
    return next(o for o in OmegaConf.load(folder / ".hydra" / "overrides.yaml") if o.startswith("model="))


def test_new_run_dir_never_hands_out_a_folder_twice(tmp_path: Path):
    wanted = str(tmp_path / "2026-01-01" / "12-00-00")
    assert [new_run_dir(wanted) for _ in range(3)] == [wanted, f"{wanted}_1", f"{wanted}_2"]


@pytest.mark.slow
def test_two_runs_started_together_get_two_folders(tmp_path: Path, mnist_dir: Path):
    MNISTDataModule(data_dir=str(mnist_dir)).prepare_data()  # unpacked once, not by both at the same time
    same = f"hydra.run.dir=${{new_dir:{tmp_path / 'same-second'}}}"  # what two runs in one second ask for
    processes = [
        subprocess.Popen(
            cli_command("stn.train", *ONE_EPOCH, f"model={model}", same),
            cwd=ROOT,
            env=cli_env(mnist_dir),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for model in ("stn", "cnn")
    ]
    for process in processes:
        assert process.wait(timeout=600) == 0, process.stderr.read()[-3000:]
    folders = sorted(tmp_path.glob("same-second*"))
    assert [f.name for f in folders] == ["same-second", "same-second_1"]
    models = [_model_choice(folder) for folder in folders]
    assert sorted(models) == ["model=cnn", "model=stn"]
    for folder, model in zip(folders, models, strict=True):  # each folder holds one run, all of it
        assert (folder / "metrics.json").is_file() and not list(folder.glob("checkpoints/last-v*.ckpt"))
        keys = torch.load(folder / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
        assert any("transformer" in key for key in keys["state_dict"]) == (model == "model=stn")


@pytest.mark.parametrize(
    ("overrides", "differs"),
    [
        (["model.optimizer.lr=0.05"], "model.optimizer.lr (0.01 -> 0.05)"),
        (["model=cnn"], "model.localization"),
    ],
)
@pytest.mark.slow
def test_a_folder_resumes_only_its_own_run(
    overrides: list[str], differs: str, interrupted_run: Path, mnist_dir: Path
):
    before = snapshot(interrupted_run)
    process = train(*overrides, run_dir=interrupted_run, data_dir=mnist_dir, check=False)
    assert_one_sentence_error(process, f"{interrupted_run} holds another run: its config differs in")
    assert differs in process.stderr and "leave hydra.run.dir unset" in process.stderr
    after = snapshot(interrupted_run)
    assert {name: after[name] for name in before if name != "train.log"} == {
        name: data for name, data in before.items() if name != "train.log"
    }  # checkpoints and Hydra's record as they were


@pytest.mark.slow
def test_the_same_command_resumes_its_interrupted_run(
    interrupted_run: Path, finished_run: Path, mnist_dir: Path
):
    train("trainer.max_epochs=2", run_dir=interrupted_run, data_dir=mnist_dir, check=False)  # another run
    train(run_dir=interrupted_run, data_dir=mnist_dir)  # the same run: it finishes
    resumed = json.loads((interrupted_run / "metrics.json").read_text())
    # it went on from its checkpoint, not from scratch: the same best weights give the same test
    finished = json.loads((finished_run / "metrics.json").read_text())
    assert resumed["test/acc"] == pytest.approx(finished["test/acc"], abs=1e-6)
    rows = list(csv.DictReader((interrupted_run / "csv" / "metrics.csv").open()))
    validated = [int(float(row["epoch"])) for row in rows if row.get("val/acc")]
    assert validated == [0]  # each epoch once: no epoch trained again


@pytest.mark.slow
def test_resuming_a_finished_run_keeps_its_record(finished_run: Path, tmp_path: Path, mnist_dir: Path):
    outputs = tmp_path / "outputs"
    shutil.copytree(finished_run, outputs / "2026-01-01" / "12-00-00")
    folder = outputs / "2026-01-01" / "12-00-00"
    (folder / ".hydra" / "overrides.yaml").write_text(  # made by the command below, ckpt_path aside
        OmegaConf.to_yaml(OmegaConf.create([*ONE_EPOCH, f"paths.log_dir={outputs}"]))
    )
    before = snapshot(folder)
    run_rejected(
        "stn.train", *ONE_EPOCH, f"paths.log_dir={outputs}", "ckpt_path=last", data_dir=mnist_dir,
        message=f"{folder} holds a finished run (metrics.json); resuming would overwrite its record",
    )  # fmt: skip
    assert snapshot(folder) == before
    assert list(outputs.glob("*/*")) == [folder]  # and no new folder for the refused start


@pytest.mark.slow
def test_a_run_folder_is_data_not_code(finished_run: Path, tmp_path: Path, mnist_dir: Path):
    crafted = tmp_path / "crafted"
    shutil.copytree(finished_run, crafted)
    victim = tmp_path / "victim.txt"
    victim.write_text("still here")
    config = OmegaConf.load(crafted / ".hydra" / "config.yaml")
    config.model = {"_target_": "builtins.open", "file": str(victim), "mode": "w"}
    OmegaConf.save(config, crafted / ".hydra" / "config.yaml")
    shutil.rmtree(crafted / "run_config")
    with pytest.raises(ConfigError, match=r"asks to build model._target_=builtins.open"):
        saved_config(crafted)
    run_rejected(
        "stn.eval", f"ckpt_path={crafted / 'checkpoints' / 'last.ckpt'}",
        f"hydra.run.dir={tmp_path / 'eval'}", data_dir=mnist_dir,
        message="asks to build model._target_=builtins.open, which is not one of",
    )  # fmt: skip
    assert victim.read_text() == "still here"


@pytest.mark.slow
def test_a_corrupt_last_checkpoint_names_the_file_and_the_way_on(interrupted_run: Path, mnist_dir: Path):
    last = interrupted_run / "checkpoints" / "last.ckpt"
    last.write_bytes(b"")
    best = next((interrupted_run / "checkpoints").glob("epoch_*.ckpt"))
    process = train(run_dir=interrupted_run, data_dir=mnist_dir, check=False)
    assert_one_sentence_error(process, f"{last} cannot be read")
    assert f"Go on from ckpt_path={best}" in process.stderr and "or delete last.ckpt" in process.stderr
    assert last.read_bytes() == b""


@pytest.mark.slow
def test_a_diverged_run_fails_and_the_summary_says_so(tmp_path: Path, mnist_dir: Path):
    process = train("model.optimizer.lr=1e6", run_dir=tmp_path / "run", data_dir=mnist_dir, check=False)
    assert_one_sentence_error(process, "training diverged: the training loss is ")
    assert not (tmp_path / "run" / "metrics.json").exists()
    sweep = tmp_path / "sweep"
    multirun(*ONE_EPOCH, "model.optimizer.lr=0.01,1e6", sweep=sweep, data_dir=mnist_dir, check=False)
    assert [job.status for job in load_jobs(sweep)] == ["ok", "diverged"]


@pytest.mark.slow
def test_one_failed_trial_does_not_end_an_optuna_study(tmp_path: Path, mnist_dir: Path):
    process, jobs = multirun(
        "hparams_search=optuna", *ONE_EPOCH, "hydra.sweeper.n_trials=4",
        "hydra.sweeper.sampler.n_startup_trials=4",
        "model.localization.depth=choice(1,99)", "data.batch_size=64", "model.optimizer.lr=0.01",
        "model.optimizer.weight_decay=0", sweep=tmp_path / "sweep", data_dir=mnist_dir, check=False,
    )  # fmt: skip
    assert process.returncode == 0, process.stderr[-2000:]
    finished = [job for job in jobs if (job / "metrics.json").is_file()]
    assert len(jobs) == 4 and 0 < len(finished) < 4  # every trial ran; the bad ones failed alone
    assert "Traceback" not in process.stderr


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("trainer.max_epochs=-1", "trainer.max_epochs=-1 is out of range: allowed integers >= 1"),
        ("model.optimizer.lr=abc", "model.optimizer.lr=abc is out of range: allowed > 0"),
        ("model.optimizer.lr=null", "model.optimizer.lr=None is out of range: allowed > 0"),
        ("model.optimizer.lr=true", "model.optimizer.lr=True is out of range: allowed > 0"),
        (
            "model.optimizer.weight_decay=abc",
            "model.optimizer.weight_decay=abc is out of range: allowed >= 0",
        ),
        ("seed=-1", "seed=-1 is out of range: allowed integers 0..4294967295 or null"),
        ("seed=abc", "seed=abc is out of range: allowed integers 0..4294967295 or null"),
        ("seed=5000000000", "seed=5000000000 is out of range: allowed integers 0..4294967295 or null"),
        (
            "trainer.precision=xyz",
            "trainer.precision=xyz is out of range: allowed 32-true | 32 | 16-mixed | 16 | bf16-mixed | bf16 "
            "| 16-true | bf16-true | 64-true | 64 | transformer-engine | transformer-engine-float16",
        ),
    ],
)
def test_values_of_the_wrong_type_or_range_are_one_sentence(override: str, message: str):
    with pytest.raises(ConfigError) as error:
        check_config(compose_config("train.yaml", [override]))
    assert str(error.value) == message


@pytest.mark.parametrize(
    ("allowed", "good", "bad", "words"),
    [
        (integers(1), [1, 7], [0, 1.0, True, "2", None], "integers >= 1"),
        (integers(1, 3), [1, 3], [0, 4], "integers 1..3"),
        (integers(1).or_null(), [None, 2], [0, "x"], "integers >= 1 or null"),
        (numbers(above=0), [1e-9, 2], [0, float("nan"), float("inf"), True], "> 0"),
        (numbers(0, 1), [0, 0.5, 1], [-0.1, 1.1], "[0, 1]"),
        (one_of("epoch", "step"), ["epoch", "step"], ["Epoch", None], "epoch | step"),
    ],
)
def test_each_range_is_one_rule_with_its_words(allowed, good, bad, words: str):
    """The same rule, and its words, for a constructor's argument and an entry point's key."""

    class Owner:
        pass

    assert all(check(Owner, allowed, value=value) == value for value in good)
    for value in bad:
        with pytest.raises(ArgumentError) as argument_error:
            check(Owner(), allowed, value=value)
        assert argument_error.value.owner is Owner
        with pytest.raises(ConfigError) as key_error:
            check_value("some.key", value, allowed.because("a reason"))
        assert str(argument_error.value) == f"value={value} is out of range: allowed {words}"
        assert str(key_error.value) == f"some.key={value} is out of range: allowed {words} (a reason)"


def test_eval_without_a_checkpoint_says_what_it_needs():
    cfg = compose_config("eval.yaml")
    GlobalHydra.instance().clear()
    with pytest.raises(ConfigError, match=r"ckpt_path is required: python -m stn.eval ckpt_path="):
        evaluate_in_process(cfg)


def _raw_copy(mnist_dir: Path, tmp_path: Path) -> Path:
    data_dir = tmp_path / "data"
    shutil.copytree(mnist_dir, data_dir)
    MNISTDataModule(data_dir=str(data_dir)).prepare_data()  # unpacked, as after a first run
    return data_dir


def test_a_truncated_unpacked_file_is_named_with_the_fix(mnist_dir: Path, tmp_path: Path):
    data_dir = _raw_copy(mnist_dir, tmp_path)
    images = data_dir / "MNIST" / "raw" / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:1000])
    with pytest.raises(MNISTDataError) as error:
        MNISTDataModule(data_dir=str(data_dir)).prepare_data()
    assert str(error.value) == (
        f"{images} is corrupt (1000 bytes, expected 47040016): delete it; the next run re-checks "
        "train-images-idx3-ubyte.gz and unpacks it again"
    )
    images.unlink()  # the fix the sentence gives
    datamodule = MNISTDataModule(data_dir=str(data_dir), train_subset=64)
    datamodule.prepare_data()
    datamodule.setup("fit")


def test_corrupt_labels_are_named_with_the_fix(mnist_dir: Path, tmp_path: Path):
    data_dir = _raw_copy(mnist_dir, tmp_path)
    labels = data_dir / "MNIST" / "raw" / "t10k-labels-idx1-ubyte"
    raw = bytearray(labels.read_bytes())
    raw[8] = 200  # the first test label
    labels.write_bytes(bytes(raw))
    with pytest.raises(
        MNISTDataError, match=rf"^{labels} is corrupt \(labels 0\.\.200, expected 0\.\.9\): delete"
    ):
        MNISTDataModule(data_dir=str(data_dir)).setup("test")


def test_archives_that_cannot_be_unpacked_are_not_reported_missing(
    mnist_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    data_dir = tmp_path / "data"
    shutil.copytree(mnist_dir, data_dir)  # the four .gz only
    for unpacked in (data_dir / "MNIST" / "raw").glob("*-ubyte"):
        unpacked.unlink()

    def read_only(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(data_dir / "MNIST" / "raw"))

    monkeypatch.setattr("torchvision.datasets.utils.extract_archive", read_only)
    with pytest.raises(MNISTDataError) as error:
        MNISTDataModule(data_dir=str(data_dir)).prepare_data()
    assert str(error.value).startswith(
        f"MNIST's files are in {data_dir / 'MNIST' / 'raw'} but could not be unpacked"
    )
    assert "Permission denied" in str(error.value) and "not found" not in str(error.value)


@pytest.mark.slow
def test_an_unwritable_run_folder_stops_before_training(tmp_path: Path, mnist_dir: Path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "checkpoints").write_text("a file where the checkpoints folder should be")
    process = train(run_dir=run_dir, data_dir=mnist_dir, check=False)
    assert_one_sentence_error(process, f"{run_dir / 'checkpoints'} cannot be written")
    assert "Epoch 0" not in process.stderr + process.stdout


@pytest.mark.slow
def test_a_checkpoint_outside_its_run_folder_asks_for_its_model(tmp_path: Path, mnist_dir: Path):
    train("model=cnn", run_dir=tmp_path / "cnn", data_dir=mnist_dir)
    moved = tmp_path / "moved.ckpt"
    shutil.copy(tmp_path / "cnn" / "checkpoints" / "last.ckpt", moved)
    process = run(
        "stn.eval", f"ckpt_path={moved}", *SMALL[1:3], f"hydra.run.dir={tmp_path / 'eval'}",
        data_dir=mnist_dir, check=False,
    )  # fmt: skip
    assert_one_sentence_error(process, f"{moved} does not fit this model config")
    assert "pass it, e.g. model=cnn" in process.stderr


@pytest.mark.slow
def test_a_misspelled_key_in_a_single_run_gets_did_you_mean(tmp_path: Path, mnist_dir: Path):
    run_rejected(
        "stn.train", "model=cnn", "model.optimizr.lr=0.1", f"hydra.run.dir={tmp_path / 'run'}",
        data_dir=mnist_dir,
        message="the command line sets model.optimizr.lr, which is not a key of this config; did you mean "
        "model.optimizer.lr",
    )  # fmt: skip
    assert not (tmp_path / "run").exists()
