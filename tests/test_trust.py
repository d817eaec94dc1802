"""Trust: reading a run folder or the zoo runs no code, nothing of the user's is overwritten or
deleted, a resumed run keeps its whole history, and a stopped run never reports success. In
process, on the session's finished run (small real MNIST); what needs a process of its own is
marked slow."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict
from PIL import Image

from stn.errors import ConfigError, RunInterrupted, UserError
from stn.inference.evaluate import evaluate
from stn.inference.export import export
from stn.inference.predict import predict
from stn.inference.zoo import add as zoo_add
from stn.loading import checkpoint_model, sha256, zoo_manifest, zoo_model
from stn.runs.folders import created_here, new_run_dir, run_lock
from stn.runs.reading import RunFolder, saved_config
from stn.runs.resume import _move_log
from stn.training import train
from stn.utils.untrusted import project_targets

from .conftest import FINISHED, ROOT, compose_config, small_run, write_hydra_record


def _craft(finished_run: Path, tmp_path: Path, edit) -> Path:
    """A copy of the finished run whose `.hydra/config.yaml` is edited by `edit(config)`."""
    crafted = tmp_path / "crafted"
    shutil.copytree(finished_run, crafted)
    shutil.rmtree(crafted / "run_config")
    config = OmegaConf.load(crafted / ".hydra" / "config.yaml")
    edit(config)
    OmegaConf.save(config, crafted / ".hydra" / "config.yaml")
    return crafted


# attribute paths that walk from an allowed module to something it imported, and plain ones
CRAFTED_TARGETS = [
    ("model", "stn.runs.reading.os.remove", "path"),
    ("model", "stn.runs.reading.shutil.rmtree", "path"),
    ("model.localization", "stn.models.lit_module.torch.load", "f"),
    ("data", "stn.data.mnist.Path.unlink", "self"),
    ("model.optimizer", "torch.optim.sgd.torch.load", "f"),
    ("model", "builtins.open", "file"),
]


def test_the_allowed_targets_are_exactly_those_conf_names():
    targets = project_targets()
    assert "stn.models.lit_module.STNLitModule" in targets and "torch.optim.SGD" in targets
    assert not any(t.startswith("builtins") or t.endswith(".load") for t in targets)


@pytest.mark.parametrize(("node", "target", "argument"), CRAFTED_TARGETS)
def test_a_crafted_target_in_a_run_folder_is_refused_everywhere_it_is_read(
    node: str, target: str, argument: str, finished_run: Path, tmp_path: Path
):
    victim = tmp_path / "victim.txt"
    victim.write_text("still here")

    def edit(config):
        OmegaConf.update(config, f"{node}._target_", target, force_add=True)
        OmegaConf.update(config, f"{node}.{argument}", str(victim), force_add=True)

    crafted = _craft(finished_run, tmp_path, edit)
    last = crafted / "checkpoints" / "last.ckpt"
    message = f"asks to build {node}._target_={target}, which is not one of this project's classes"
    with pytest.raises(ConfigError, match=message):
        saved_config(crafted)
    with pytest.raises(ConfigError, match=message):
        checkpoint_model(last)  # stn.predict, stn.export, stn.paper_table, stn.zoo add
    cfg = compose_config("eval.yaml", [f"ckpt_path={last}", "trainer.accelerator=cpu"])
    with pytest.raises(ConfigError, match=message):
        evaluate(cfg)
    assert victim.read_text() == "still here"


def test_an_interpolated_target_is_checked_as_it_resolves(finished_run: Path, tmp_path: Path):
    def edit(config):
        config.elsewhere = {"_target_": "builtins.exec", "source": "open('x', 'w')"}
        config.model = "${elsewhere}"

    crafted = _craft(finished_run, tmp_path, edit)
    with pytest.raises(ConfigError, match="asks to build model._target_=builtins.exec"):
        saved_config(crafted)


@pytest.mark.parametrize("value", ["${new_dir:TMP/made}", "${oc.create:{a: 1}}", "x-${new_dir:TMP/made}"])
def test_interpolations_with_side_effects_are_not_resolved(value: str, finished_run: Path, tmp_path: Path):
    value = value.replace("TMP", str(tmp_path))
    crafted = _craft(finished_run, tmp_path, lambda c: OmegaConf.update(c, "paths.extra", value))
    with pytest.raises(ConfigError, match="an interpolation through the resolver .* may act on this machine"):
        saved_config(crafted)
    assert not (tmp_path / "made").exists()


def test_where_hydra_was_to_write_is_not_read_back(finished_run: Path, tmp_path: Path):
    hydra_file = finished_run / ".hydra" / "hydra.yaml"
    record = OmegaConf.load(hydra_file)
    record.hydra.sweep.dir = f"${{new_dir:{tmp_path / 'made'}}}"  # as Hydra saves it
    crafted = _craft(
        finished_run, tmp_path, lambda c: OmegaConf.update(c, "paths.extra", "${hydra:sweep.dir}")
    )
    OmegaConf.save(record, crafted / ".hydra" / "hydra.yaml")
    assert saved_config(crafted).paths.extra is None
    assert not (tmp_path / "made").exists()


def test_overrides_and_choices_are_read_as_plain_data(finished_run: Path, tmp_path: Path):
    crafted = tmp_path / "crafted"
    shutil.copytree(finished_run, crafted)
    (crafted / ".hydra" / "overrides.yaml").write_text(f"- model.x=${{new_dir:{tmp_path / 'made'}}}\n")
    assert RunFolder(crafted).overrides == [f"model.x=${{new_dir:{tmp_path / 'made'}}}"]
    assert RunFolder(crafted).choices["model"] == "stn"
    assert not (tmp_path / "made").exists()


@pytest.fixture
def zoo_copy(tmp_path: Path) -> Path:
    zoo = tmp_path / "zoo"
    shutil.copytree(ROOT / "zoo", zoo)
    return zoo


def test_a_tampered_zoo_config_is_refused(zoo_copy: Path):
    config = zoo_copy / "stn_mnist.yaml"
    config.write_text(config.read_text().replace("stn.models.lit_module.STNLitModule", "builtins.exec"))
    with pytest.raises(UserError, match="does not match its config_sha256"):
        zoo_model("stn_mnist", zoo_copy)
    # a manifest edited to match is still refused: the target is not the project's
    manifest = json.loads((zoo_copy / "manifest.json").read_text())
    manifest["models"]["stn_mnist"]["config_sha256"] = sha256(config)
    (zoo_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match="_target_=builtins.exec, which is not one of"):
        zoo_model("stn_mnist", zoo_copy)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda z: (z / "manifest.json").write_text("{not json"), "is not the zoo's manifest"),
        (lambda z: (z / "manifest.json").write_text(""), "is not the zoo's manifest"),
        (lambda z: (z / "stn_mnist.yaml").unlink(), "its config file .* is missing"),
        (lambda z: (z / "stn_mnist.safetensors").write_bytes(b"\xff" * 64), "does not match its sha256"),
    ],
)
def test_a_damaged_zoo_is_one_sentence(damage, message: str, zoo_copy: Path):
    damage(zoo_copy)
    with pytest.raises(UserError, match=message):
        zoo_model("stn_mnist", zoo_copy)


def test_zoo_weights_of_the_wrong_shape_are_one_sentence(zoo_copy: Path):
    manifest = json.loads((zoo_copy / "manifest.json").read_text())
    shutil.copy(zoo_copy / "cnn_mnist.safetensors", zoo_copy / "stn_mnist.safetensors")
    manifest["models"]["stn_mnist"]["sha256"] = sha256(zoo_copy / "stn_mnist.safetensors")
    (zoo_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="stn_mnist.safetensors cannot be loaded into its model"):
        zoo_model("stn_mnist", zoo_copy)


@pytest.mark.parametrize(
    ("name", "data_dir", "message"),
    [
        ("../../x", None, "name=../../x is out of range: allowed letters, digits, _ and -"),
        ("stn_mnist", None, "the zoo already has stn_mnist"),
        ("new_model", "/nonexistent", "--data-dir /nonexistent holds no MNIST/raw/"),
    ],
)
def test_a_refused_zoo_add_leaves_the_zoo_as_it_was(
    name: str, data_dir: str | None, message: str, zoo_copy: Path, finished_run: Path, mnist_dir: Path
):
    before = {p.name: p.read_bytes() for p in zoo_copy.iterdir()}
    with pytest.raises(UserError, match=message):
        zoo_add(name, finished_run, Path(data_dir) if data_dir else mnist_dir, zoo_copy)
    assert {p.name: p.read_bytes() for p in zoo_copy.iterdir()} == before
    assert not (zoo_copy.parent / "x.safetensors").exists()
    assert set(zoo_manifest(zoo_copy)) == set(zoo_manifest(ROOT / "zoo"))


def test_a_resume_refused_in_the_users_folder_deletes_nothing(tmp_path: Path):
    users = tmp_path / "d"
    users.mkdir()
    (users / "important.log").write_text("x")
    (users / ".hydra").mkdir()
    _move_log(users, tmp_path / "elsewhere")
    assert (users / "important.log").read_text() == "x"
    # a folder this process made for this start, holding only Hydra's record, is removed
    made = Path(new_run_dir(str(tmp_path / "made")))
    (made / ".hydra").mkdir()
    (made / ".hydra" / "config.yaml").write_text("{}")
    (made / "train.log").write_text("")
    assert created_here(made)
    _move_log(made, tmp_path / "elsewhere")
    assert not made.exists()


def test_a_second_run_in_a_locked_folder_is_refused(tmp_path: Path):
    with run_lock(tmp_path), pytest.raises(ConfigError, match="another process is training in"):
        with run_lock(tmp_path):
            pass
    with run_lock(tmp_path):  # released when the first ends
        pass


class SigtermOnce(L.Callback):
    """Sends this process SIGTERM after the first training batch of epoch `epoch`, once: the
    `flag` file is there until it has been sent (so the run's config is the same at both starts)."""

    def __init__(self, epoch: int, flag: str) -> None:
        self.epoch, self.flag = epoch, Path(flag)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.current_epoch == self.epoch and self.flag.exists():
            self.flag.unlink()
            os.kill(os.getpid(), signal.SIGTERM)


def test_a_stopped_run_fails_and_its_resume_keeps_the_whole_history(tmp_path: Path, mnist_dir: Path):
    run_dir, flag = tmp_path / "run", tmp_path / "send-sigterm"
    flag.write_text("")
    overrides = [*FINISHED, "trainer.max_epochs=3"]
    sigterm = {"_target_": f"{__name__}.SigtermOnce", "epoch": 2, "flag": str(flag)}

    def start() -> dict:
        cfg = small_run(compose_config("train.yaml", overrides), run_dir, mnist_dir)
        cfg.trainer.max_epochs = 3
        with open_dict(cfg):
            cfg.callbacks.sigterm = sigterm
        write_hydra_record(cfg, run_dir)
        try:
            return train(cfg)
        finally:
            GlobalHydra.instance().clear()

    with pytest.raises(RunInterrupted, match=r"stopped \(SIGTERM\) in epoch 2 and is incomplete") as stopped:
        start()
    assert stopped.value.exit_code == 128 + signal.SIGTERM
    assert not (run_dir / "metrics.json").exists()
    first = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert first["epoch"] == 1  # the last finished epoch: what the resume starts after
    first_fit = first["callbacks"]["Timer"]["time_elapsed"]["train"]

    metrics = start()  # the same command again: it resumes from its own last.ckpt

    rows = list(csv.DictReader((run_dir / "csv" / "metrics.csv").open()))
    epochs_with_train_loss = [int(float(r["epoch"])) for r in rows if r.get("train/loss")]
    assert epochs_with_train_loss == [0, 1, 2]  # every epoch once, from epoch 0
    steps = [float(r["step"]) for r in rows]
    assert steps == sorted(steps)
    with Image.open(run_dir / "transform_history.gif") as gif:
        assert gif.n_frames == 3  # epochs 0, 1, 2
    assert metrics["time/fit_seconds"] > first_fit
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["callbacks"]["Timer"]["time_elapsed"]["train"] == pytest.approx(
        metrics["time/fit_seconds"], abs=1.0
    )


def _export_cfg(tmp_path: Path, mnist_dir: Path, *overrides: str):
    cfg = compose_config("export.yaml", ["model_name=stn_mnist", "check_images=8", *overrides])
    cfg.paths.output_dir = str(tmp_path / "run")
    cfg.data_dir = str(mnist_dir)
    return cfg


@pytest.mark.parametrize(
    ("output", "message"),
    [
        ("m.json", "allowed a file name ending in .onnx"),
        ("x.onnx", "x.onnx already exists"),  # the user's own file of that name
        ("blocker/m.onnx", "blocker is a file, not a folder"),
        ("folder.onnx", "is a folder"),
    ],
)
def test_export_never_replaces_a_file_it_was_not_asked_to(
    output: str, message: str, tmp_path: Path, mnist_dir
):
    (tmp_path / "x.onnx").write_text("the user's")
    (tmp_path / "blocker").write_text("a file")
    (tmp_path / "folder.onnx").mkdir()
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    with pytest.raises(ConfigError, match=message):
        export(_export_cfg(tmp_path, mnist_dir, f"output_file={tmp_path / output}"))
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before


def test_export_replaces_only_with_overwrite(tmp_path: Path, mnist_dir: Path):
    out = tmp_path / "m.pt"
    export(_export_cfg(tmp_path, mnist_dir, f"output_file={out}", "format=torchscript"))
    with pytest.raises(ConfigError, match="m.pt and .*m.json already exist"):
        export(_export_cfg(tmp_path, mnist_dir, f"output_file={out}", "format=torchscript"))
    report = export(
        _export_cfg(tmp_path, mnist_dir, f"output_file={out}", "format=torchscript", "overwrite=true")
    )
    assert report["largest_difference"] < 1e-4
    # no partial file left; the report and the canvas preparation in the export's run folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt", "run"]
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["m.json", "prepare_canvas.py"]


def _digit_png(path: Path, digit_image: Image.Image) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    digit_image.save(path)


def test_predict_keeps_every_inputs_pictures_apart_and_fails_when_none_is_read(
    tmp_path: Path, mnist_dir: Path
):
    from torchvision.datasets import MNIST

    digits = MNIST(mnist_dir, train=False, download=True)
    inputs = tmp_path / "in"
    _digit_png(inputs / "a" / "x.png", digits[0][0])
    _digit_png(inputs / "b" / "x.png", digits[1][0])
    (inputs / "c").mkdir()
    (inputs / "c" / "x.png").symlink_to(inputs / "gone.png")  # a dangling link: a line of its own
    Image.new("L", (20000, 20000)).save(inputs / "bomb.png")  # a decompression bomb: a line of its own
    cfg = compose_config("predict.yaml", ["model_name=stn_mnist", f"inputs={inputs}/*/x.*"])
    cfg.paths.output_dir = str(tmp_path / "run")
    results = predict(cfg)
    pictures = [r["picture"] for r in results if not r["error"]]
    assert len(pictures) == 2 and len(set(pictures)) == 2 and all(Path(p).is_file() for p in pictures)
    assert [r["prediction"] for r in results if not r["error"]] == [digits[0][1], digits[1][1]]
    (dangling,) = [r for r in results if r["error"]]
    assert "which does not exist" in dangling["error"]

    cfg.inputs = str(inputs / "bomb.png")
    cfg.paths.output_dir = str(tmp_path / "bomb-run")
    with pytest.raises(UserError, match="none of the 1 images could be predicted .*too large to read safely"):
        predict(cfg)
    assert (tmp_path / "bomb-run" / "predictions.csv").is_file()


def test_a_float_tiff_is_read_by_its_own_range(tmp_path: Path, mnist_dir: Path):
    import numpy as np
    from torchvision.datasets import MNIST

    from stn.data.images import read_grey

    digit = np.asarray(MNIST(mnist_dir, train=False, download=True)[0][0], dtype=np.float32)
    for scale, name in ((1 / 255, "unit.tif"), (1000 / 255, "wide.tif")):
        Image.fromarray(digit * scale, mode="F").save(tmp_path / name)
        grey = read_grey(tmp_path / name)
        assert float(grey.max()) == pytest.approx(1.0) and float(grey.min()) == pytest.approx(0.0)


def test_the_summary_never_ranks_a_nan_first_and_skips_what_it_cannot_read(finished_run, tmp_path, capsys):
    from stn.summarize import main as summarize
    from stn.sweeps.paper_table import find_runs

    sweep = tmp_path / "sweep"
    for job in range(4):
        shutil.copytree(finished_run, sweep / str(job))
    nan = json.loads((sweep / "1" / "metrics.json").read_text()) | {"val/acc_best": float("nan")}
    (sweep / "1" / "metrics.json").write_text(json.dumps(nan))  # json writes NaN, as Python's does
    (sweep / "2" / "metrics.json").write_text("{broken")
    (sweep / "3" / ".hydra" / "overrides.yaml").write_text("- [unclosed")
    (sweep / "multirun.yaml").write_text(
        "hydra:\n  overrides:\n    task: [trainer.max_epochs=1, 'seed=0,1,2,3']\n"
    )
    assert summarize([str(sweep)]) == 0
    page, table = (sweep / "summary.html").read_text(), (sweep / "summary.md").read_text()
    for text in (page, table):  # the sweep's command and what every job shared, not only what varied
        assert "python -m stn.train --multirun trainer.max_epochs=1 seed=0,1,2,3" in text
        assert "data.train_subset=512" in text and "trainer.max_epochs=1" in text
    rows = list(csv.DictReader((sweep / "summary.csv").open()))
    assert [(r["job"], r["status"]) for r in rows] == [
        ("0", "ok"),
        ("1", "diverged"),
        ("2", "failed"),
        ("3", "failed"),
    ]
    assert "val/acc_best=nan" in rows[1]["error"] and "is not JSON" in rows[2]["error"]
    assert "cannot be read as YAML" in rows[3]["error"]
    assert find_runs(sweep) == []  # not a distorted variant; the broken folders are skipped with a line
    assert "skipped" in capsys.readouterr().err


def test_a_checkpoint_is_never_half_written(tmp_path: Path, monkeypatch):
    from stn.utils.checkpoints import AtomicCheckpointIO, CheckpointNotSaved

    target = tmp_path / "checkpoints" / "epoch_001.ckpt"
    writer = AtomicCheckpointIO()
    writer.save_checkpoint({"state_dict": {"w": torch.ones(3)}}, target)
    before = target.read_bytes()

    # a disk that fills up mid-write: the file being written is /dev/full, which answers ENOSPC
    (target.parent / f".{target.name}.partial").symlink_to("/dev/full")
    with pytest.raises(
        CheckpointNotSaved, match=r"\(No space left on device\); the previous epoch_001.ckpt is kept"
    ):
        writer.save_checkpoint({"state_dict": {"w": torch.zeros(100_000)}}, target)
    assert target.read_bytes() == before and sorted(p.name for p in target.parent.iterdir()) == [target.name]

    def torch_refuses(obj, file):  # torch's own writer fails in its own words
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    monkeypatch.setattr(torch, "save", torch_refuses)
    with pytest.raises(
        CheckpointNotSaved, match=r"\(\[enforce fail .*\); the previous epoch_001.ckpt is kept"
    ):
        writer.save_checkpoint({"state_dict": {"w": torch.zeros(3)}}, target)
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name]


def test_a_run_writes_its_checkpoints_through_the_atomic_writer(finished_run: Path):
    from stn.utils.checkpoints import AtomicCheckpointIO

    cfg = compose_config("train.yaml")
    trainer = instantiate(cfg.trainer, accelerator="cpu")
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    assert not list((finished_run / "checkpoints").glob(".*partial"))


def test_the_same_command_in_a_finished_runs_folder_has_nothing_to_do(
    finished_run: Path, tmp_path: Path, mnist_dir
):
    from .conftest import train_in_process

    again = tmp_path / "run"
    shutil.copytree(finished_run, again)
    before = {p.name: p.stat().st_mtime_ns for p in (again / "checkpoints").iterdir()}
    metrics = train_in_process(FINISHED, again, mnist_dir)  # a sweep re-run into the same folder
    assert metrics == json.loads((again / "metrics.json").read_text())
    assert {p.name: p.stat().st_mtime_ns for p in (again / "checkpoints").iterdir()} == before


def test_a_relative_export_file_goes_where_the_user_names_it(tmp_path: Path, mnist_dir: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where the command was started
    cfg = _export_cfg(tmp_path / "run", mnist_dir, "output_file=stn.pt", "format=torchscript")
    export(cfg)
    run_dir = Path(cfg.paths.output_dir)
    assert (tmp_path / "stn.pt").is_file() and not (run_dir / "stn.pt").exists()  # ./stn.pt, as asked
    assert (run_dir / "stn.json").is_file() and (
        run_dir / "prepare_canvas.py"
    ).is_file()  # the run's own files
    assert not (tmp_path / "stn.json").exists() and not (tmp_path / "prepare_canvas.py").exists()
    with pytest.raises(ConfigError, match="stn.pt already exists"):  # never replaced unasked
        export(_export_cfg(tmp_path / "again", mnist_dir, "output_file=stn.pt", "format=torchscript"))


def test_a_stopped_prediction_keeps_every_row_it_made(tmp_path: Path, mnist_dir: Path, monkeypatch):
    from torchvision.datasets import MNIST

    import stn.inference.predict as predicting

    digits = MNIST(mnist_dir, train=False, download=True)
    inputs = tmp_path / "in"
    for index in range(4):
        _digit_png(inputs / f"{index}.png", digits[index][0])
    made = []
    real = predicting.predict_image

    def stopped_at_the_third(*args, **kwargs):
        if len(made) == 2:
            raise KeyboardInterrupt  # Ctrl-C, or a stop, while the third image is predicted
        made.append(args[1])
        return real(*args, **kwargs)

    monkeypatch.setattr(predicting, "predict_image", stopped_at_the_third)
    cfg = compose_config("predict.yaml", ["model_name=stn_mnist", f"inputs={inputs}"])
    cfg.paths.output_dir = str(tmp_path / "run")
    with pytest.raises(KeyboardInterrupt):
        predict(cfg)
    rows = list(csv.DictReader((tmp_path / "run" / "predictions.partial.csv").open()))
    assert [Path(row["file"]).name for row in rows] == ["0.png", "1.png"]
    assert [int(row["prediction"]) for row in rows] == [digits[0][1], digits[1][1]]
    assert not (tmp_path / "run" / "predictions.csv").exists()  # a whole set only under the final name
