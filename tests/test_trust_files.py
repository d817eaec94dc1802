"""Trust, the files a run reads: nothing read from a run folder, the zoo, a sweep folder or the
data folder can hang the project or take its memory (FIFOs, links to /dev/zero, YAML alias bombs,
deep JSON), a checkpoint that is not a file is refused rather than replaced by another run's, and
no environment variable leaves an untrusted config. Each would-be hang runs under a time limit
that fails the test instead of hanging it."""

from __future__ import annotations

import json
import os
import shutil
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from PIL import Image

from stn.errors import ConfigError, UserError
from stn.loading import sha256, zoo_model
from stn.runs.reading import RunFolder, saved_config
from stn.runs.resume import resume_point

from .conftest import ROOT

BOMB = """\
a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]
i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h]
model: *i
"""


@contextmanager
def within(seconds: float) -> Iterator[None]:
    """Fail (TimeoutError) instead of hanging when the block takes longer than `seconds`."""

    def expired(signum, frame):
        raise TimeoutError(f"still running after {seconds} s: it would have hung")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _copy_run(finished_run: Path, tmp_path: Path) -> Path:
    crafted = tmp_path / "crafted"
    shutil.copytree(finished_run, crafted)
    shutil.rmtree(crafted / "run_config")
    return crafted


def test_a_yaml_alias_bomb_in_a_run_folder_is_refused_at_once(finished_run: Path, tmp_path: Path):
    crafted = _copy_run(finished_run, tmp_path)
    (crafted / ".hydra" / "config.yaml").write_text(BOMB)
    with within(10), pytest.raises(ConfigError, match="config.yaml uses YAML anchors and aliases"):
        saved_config(crafted)
    (crafted / ".hydra" / "overrides.yaml").write_text(BOMB)
    with within(10), pytest.raises(ConfigError, match="overrides.yaml uses YAML anchors and aliases"):
        _ = RunFolder(crafted).overrides


def test_a_yaml_alias_bomb_in_the_zoo_is_refused_even_with_a_matching_sha256(tmp_path: Path):
    zoo = tmp_path / "zoo"
    shutil.copytree(ROOT / "zoo", zoo)
    (zoo / "stn_mnist.yaml").write_text(BOMB)
    manifest = json.loads((zoo / "manifest.json").read_text())
    manifest["models"]["stn_mnist"]["config_sha256"] = sha256(zoo / "stn_mnist.yaml")
    (zoo / "manifest.json").write_text(json.dumps(manifest))
    with within(10), pytest.raises(ConfigError, match="stn_mnist.yaml uses YAML anchors and aliases"):
        zoo_model("stn_mnist", zoo)


def test_a_yaml_alias_bomb_in_a_sweep_job_is_a_failed_job(finished_run: Path, tmp_path: Path):
    from stn.summarize import load_jobs

    sweep = tmp_path / "sweep"
    for job in range(2):
        shutil.copytree(finished_run, sweep / str(job))
    (sweep / "1" / ".hydra" / "overrides.yaml").write_text(BOMB)
    with within(20):
        jobs = load_jobs(sweep)
    assert [job.status for job in jobs] == ["ok", "failed"]
    assert "uses YAML anchors and aliases" in jobs[1].error


@pytest.mark.parametrize("kind", ["fifo", "dev_zero", "folder"])
def test_a_metrics_file_or_config_that_is_not_a_regular_file_is_refused(
    kind: str, finished_run: Path, tmp_path: Path
):
    crafted = _copy_run(finished_run, tmp_path)
    for target in (crafted / "metrics.json", crafted / ".hydra" / "config.yaml"):
        target.unlink()
        if kind == "fifo":
            os.mkfifo(target)
        elif kind == "dev_zero":
            target.symlink_to("/dev/zero")
        else:
            target.mkdir()
    kinds = {"fifo": r"a FIFO \(named pipe\)", "dev_zero": "a character device", "folder": "a folder"}
    expected = kinds[kind]
    with within(10), pytest.raises(ConfigError, match=f"metrics.json is {expected}, not a regular file"):
        _ = RunFolder(crafted).metrics
    with within(10), pytest.raises(ConfigError, match=f"config.yaml is {expected}, not a regular file"):
        saved_config(crafted)


def test_a_huge_config_is_refused_before_it_is_read(finished_run: Path, tmp_path: Path):
    crafted = _copy_run(finished_run, tmp_path)
    with (crafted / ".hydra" / "config.yaml").open("r+b") as file:
        file.truncate(64 << 20)  # sparse: 64 MB of nothing, no disk used
    with within(10), pytest.raises(ConfigError, match="more than the .* such a file may have"):
        saved_config(crafted)


def test_a_deeply_nested_metrics_file_is_a_failed_job_not_a_crash(finished_run: Path, tmp_path: Path):
    crafted = _copy_run(finished_run, tmp_path)
    (crafted / "metrics.json").write_text("[" * 100_000 + "]" * 100_000)
    with within(10), pytest.raises(ConfigError, match="nests deeper than any metrics file"):
        _ = RunFolder(crafted).metrics
    # deep enough for the depth check, not for json's own recursion limit
    (crafted / "metrics.json").write_text('{"test/acc": 0.5, "deep": ' + "[" * 200 + "]" * 200 + "}")
    with within(10), pytest.raises(ConfigError, match="nests deeper than any metrics file"):
        _ = RunFolder(crafted).metrics


@pytest.mark.parametrize("kind", ["fifo", "dev_zero"])
def test_an_mnist_archive_that_is_not_a_file_names_its_path(kind: str, tmp_path: Path, mnist_dir: Path):
    from stn.data import MNISTDataModule
    from stn.data.mnist_files import MNISTDataError

    data_dir = tmp_path / "data"
    shutil.copytree(mnist_dir / "MNIST" / "raw", data_dir / "MNIST" / "raw")
    archive = data_dir / "MNIST" / "raw" / "train-images-idx3-ubyte.gz"
    for path in (archive, archive.with_suffix("")):
        path.unlink(missing_ok=True)
    if kind == "fifo":
        os.mkfifo(archive)
    else:
        archive.symlink_to("/dev/zero")
    datamodule = MNISTDataModule(data_dir=str(data_dir))
    expected = "a FIFO" if kind == "fifo" else "a character device"
    with within(20), pytest.raises(MNISTDataError, match=f"train-images-idx3-ubyte.gz is {expected}"):
        datamodule.prepare_data()


@pytest.mark.parametrize("kind", ["fifo", "dev_zero"])
def test_a_last_checkpoint_that_is_not_a_file_is_refused_never_replaced(
    kind: str, finished_run: Path, tmp_path: Path
):
    """Not taken for missing: that would resume another run of the same overrides instead."""
    log_dir = tmp_path / "outputs"
    other = log_dir / "other"  # another run of the same command, with a sound last.ckpt
    shutil.copytree(finished_run, other)
    mine = log_dir / "mine"
    shutil.copytree(finished_run, mine)
    last = mine / "checkpoints" / "last.ckpt"
    last.unlink()
    os.mkfifo(last) if kind == "fifo" else last.symlink_to("/dev/zero")
    overrides = RunFolder(mine).overrides
    for ckpt_path in (None, "last"):
        with within(10), pytest.raises(ConfigError, match="last.ckpt is a"):
            resume_point(ckpt_path, mine, log_dir, overrides)
    with within(10), pytest.raises(ConfigError, match="last.ckpt is a"):
        resume_point(str(last), tmp_path / "new", log_dir, overrides)


def test_reading_a_checkpoint_that_is_not_a_file_is_one_sentence(tmp_path: Path):
    from stn.utils.checkpoints import read_checkpoint

    fifo = tmp_path / "x.ckpt"
    os.mkfifo(fifo)
    with within(10), pytest.raises(UserError, match="x.ckpt cannot be read as a checkpoint .*a FIFO"):
        read_checkpoint(fifo)


# -- no environment variable leaves an untrusted config --


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("optimized_metric", "${oc.env:STN_TEST_SECRET}"),
        ("paths.extra", "token-${oc.env:STN_TEST_SECRET,none}"),
        ("model.note", "${oc.env:STN_ROOT,.}"),  # the project's own form, at a key that is not its own
    ],
)
def test_an_environment_interpolation_in_a_read_config_is_refused(
    key: str, value: str, finished_run: Path, tmp_path: Path, monkeypatch
):
    monkeypatch.setenv("STN_TEST_SECRET", "hunter2")
    crafted = _copy_run(finished_run, tmp_path)
    config = OmegaConf.load(crafted / ".hydra" / "config.yaml")
    OmegaConf.update(config, key, value, force_add=True)
    OmegaConf.save(config, crafted / ".hydra" / "config.yaml")
    with pytest.raises(ConfigError, match="reads this machine's environment") as refused:
        saved_config(crafted)
    assert "hunter2" not in str(refused.value)


def test_the_projects_own_environment_paths_still_read_back(finished_run: Path):
    config = saved_config(finished_run)  # paths.root_dir: ${oc.env:STN_ROOT,.} as conf/ writes it
    assert config.model._target_ == "stn.models.lit_module.STNLitModule"
    assert Path(config.paths.root_dir).resolve() == Path(os.environ["STN_ROOT"]).resolve()


def test_a_summary_never_shows_an_environment_variable(finished_run: Path, tmp_path: Path, monkeypatch):
    from stn.summarize import main as summarize

    monkeypatch.setenv("STN_TEST_SECRET", "hunter2")
    sweep = tmp_path / "sweep"
    shutil.copytree(finished_run, sweep / "0")
    config = OmegaConf.load(sweep / "0" / ".hydra" / "config.yaml")
    config.optimized_metric = "${oc.env:STN_TEST_SECRET}"
    OmegaConf.save(config, sweep / "0" / ".hydra" / "config.yaml")
    summarize([str(sweep)])
    for name in ("summary.md", "summary.csv", "summary.html"):
        assert "hunter2" not in (sweep / name).read_text()


def test_a_checkpoint_and_hparams_yaml_hold_no_data_folder(finished_run: Path, mnist_dir: Path):
    """The machine's data folder is not in what a run shares: its checkpoint's hyperparameters and
    TensorBoard's hparams.yaml. (Lightning's ModelCheckpoint state keeps the run folder's own
    checkpoint paths, which a resume needs: docs/predict.md says so.)"""
    import torch

    checkpoint = torch.load(finished_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert "data_dir" not in checkpoint.get("datamodule_hyper_parameters", {})
    assert str(mnist_dir) not in str(checkpoint.get("datamodule_hyper_parameters", {}))
    assert str(mnist_dir) not in str(checkpoint.get("hyper_parameters", {}))
    for hparams in finished_run.glob("tensorboard/**/hparams.yaml"):
        assert str(mnist_dir) not in hparams.read_text()


def test_a_run_folder_named_from_many_long_overrides_fits_the_file_system(tmp_path: Path):
    """A run's name is cut to fit a file system's 255 bytes per name, and stays unique: two runs
    whose long labels agree up to the cut get two folders."""
    from stn.runs.folders import new_run_dir, run_label

    overrides = ",".join(f"+note{i}={'x' * 80}" for i in range(6))  # ~500 characters of overrides
    label = run_label("mnist_rts", "paper_stn", overrides)
    name = f"2026-12-05_04-00-00{label}"
    assert len(name.encode()) <= 255
    first, second = Path(new_run_dir(str(tmp_path / name))), Path(new_run_dir(str(tmp_path / name)))
    assert first != second and first.is_dir() and second.is_dir()


def test_a_sweep_jobs_log_or_picture_that_is_not_a_file_does_not_hang_the_summary(
    finished_run: Path, tmp_path: Path
):
    from stn.summarize import main as summarize

    sweep = tmp_path / "sweep"
    for job in range(2):
        shutil.copytree(finished_run, sweep / str(job))
    (sweep / "1" / "metrics.json").unlink()  # a failed job: its error is read from its logs
    os.mkfifo(sweep / "1" / "train.log")
    (sweep / "1" / "stuck.log").symlink_to("/dev/zero")
    (sweep / "0" / "transform_history.png").unlink(missing_ok=True)
    os.mkfifo(sweep / "0" / "transform_history.png")
    with within(30):
        assert summarize([str(sweep)]) == 0
    page = (sweep / "summary.html").read_text()
    assert "job 0 transform history" not in page and "job 1: failed" in page  # left out, not waited on


def test_a_phone_photo_is_read_turned_as_its_exif_says(tmp_path: Path):
    """A phone stores the sensor's pixels and an EXIF orientation; a viewer (and the user) sees them
    turned. Here the stored image is 30 wide and 10 high, ink on its left end; orientation 6 says
    "turn 90 degrees clockwise to show", so the digit is seen 10 wide and 30 high, ink at the top."""
    from stn.data.images import read_grey

    stored = Image.new("L", (30, 10), 255)
    stored.paste(0, (0, 0, 10, 10))  # the ink: the stored image's left third
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW to display
    stored.save(tmp_path / "photo.jpg", exif=exif.tobytes(), quality=95)
    grey = read_grey(tmp_path / "photo.jpg")
    assert grey.shape == (30, 10)
    assert grey[:10].mean() < 0.1 and grey[20:].mean() > 0.9  # the ink on top, as shown


def test_an_input_image_that_is_a_fifo_or_a_loop_of_links_is_one_sentence_at_once(tmp_path: Path):
    from stn.data.images import ImageError, read_grey

    fifo = tmp_path / "digit.png"
    os.mkfifo(fifo)
    fifo_refused = r"digit.png is a FIFO \(named pipe\), not a regular file"
    with within(10), pytest.raises(ImageError, match=fifo_refused):
        read_grey(fifo)
    (tmp_path / "a.png").symlink_to(tmp_path / "b.png")
    (tmp_path / "b.png").symlink_to(tmp_path / "a.png")
    with pytest.raises(ImageError, match=r"a.png is a link that leads back to itself \(a loop of links\)"):
        read_grey(tmp_path / "a.png")


def test_a_checkpoint_with_a_flipped_bit_in_a_weight_is_refused(finished_run: Path, tmp_path: Path):
    import struct
    import zipfile

    from stn.utils.checkpoints import read_checkpoint

    damaged = tmp_path / "last.ckpt"
    shutil.copy(finished_run / "checkpoints" / "last.ckpt", damaged)
    read_checkpoint(damaged)  # whole: read
    with zipfile.ZipFile(damaged) as archive:
        weights = max(archive.infolist(), key=lambda entry: entry.file_size)  # the largest tensor's bytes
    data = bytearray(damaged.read_bytes())
    name_length, extra_length = struct.unpack(
        "<HH", data[weights.header_offset + 26 : weights.header_offset + 30]
    )
    inside = weights.header_offset + 30 + name_length + extra_length + weights.file_size // 2
    data[inside] ^= 0x01  # one bit of one weight: torch.load alone reads it without a word
    damaged.write_bytes(bytes(data))
    entry = weights.filename.split("/")[-1]
    refused = rf"last.ckpt cannot be read as a checkpoint \(its part .*{entry} fails its CRC-32"
    with pytest.raises(UserError, match=refused):
        read_checkpoint(damaged)


def test_a_named_run_folder_that_cannot_be_one_is_a_sentence_before_hydra_makes_it(
    tmp_path: Path, monkeypatch
):
    from stn.runs.folders import run_dir_refusal

    (tmp_path / "file").write_text("x")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    key = "hydra.run.dir"
    said = {
        name: run_dir_refusal(key, str(tmp_path / name))
        for name in ("file", "file/run", "dangling", "x" * 300)
    }
    assert said["file"].endswith("cannot be a run folder: it is a file, not a folder")
    assert said["file/run"].endswith(f"cannot be a run folder: {tmp_path / 'file'} is a file, not a folder")
    assert said["dangling"].endswith(f"it is a link to {tmp_path / 'nowhere'}, which does not exist")
    assert said["x" * 300].endswith("a name in it is 300 bytes, more than the 255 a file system takes")
    assert run_dir_refusal(key, str(tmp_path / "new" / "run")) is None  # made by Hydra, as usual
    assert run_dir_refusal(key, "${paths.log_dir}/x") is None  # an interpolation: Hydra's to resolve

    class Full:
        f_bavail, f_files, f_favail = 0, 100, 100

    monkeypatch.setattr(os, "statvfs", lambda path: Full())
    assert "the disk holding" in run_dir_refusal(key, str(tmp_path / "new")) and "is full" in run_dir_refusal(
        key, str(tmp_path / "new")
    )
