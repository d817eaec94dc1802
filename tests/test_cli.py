"""The command line answers before torch and Lightning are imported (`--cfg` of every command,
refused command lines, tab completion, `stn.zoo list`), Optuna and Gradio only when a sweep or the
demo page starts, and Hydra's refusals become one sentence with the nearest names."""

from __future__ import annotations

import subprocess
import sys

import pytest

from stn.paths import CONF_DIR, ROOT
from stn.sweeps.checks import refused_command_line


@pytest.mark.parametrize(
    ("args", "sentence"),
    [
        (
            ["model=stnn"],
            "error: model=stnn is not an option of the model group; did you mean stn? allowed: cnn |",
        ),
        (["data=mnist_rtz"], "did you mean mnist_rts?"),
        (
            ["model.optimizr.lr=1"],
            "the command line sets model.optimizr.lr, which is not a key of this config",
        ),
        (["model=cnn", "seed=1"], None),  # nothing wrong with the keys: Hydra's own message stands
    ],
)
def test_a_refused_command_line_is_one_sentence_with_the_nearest_names(args: list[str], sentence: str | None):
    found = refused_command_line(CONF_DIR, "train.yaml", args)
    assert found == sentence if sentence is None else sentence in found


@pytest.mark.slow
@pytest.mark.parametrize(
    ("command", "expected_status"),
    [
        (["stn.train", "--cfg", "job"], 0),
        (["stn.eval", "--cfg", "job"], 0),
        (["stn.predict", "--cfg", "job"], 0),
        (["stn.export", "--cfg", "job"], 0),
        (["stn.demo", "--cfg", "job"], 0),
        (["stn.predict", "top_kk=3"], 1),
        (["stn.train", "model=stnn"], 1),
        (["stn.train", "-sc", "query=bash"], 0),
        (["stn.zoo", "list"], 0),
    ],
)
def test_the_command_line_answers_before_torch_and_lightning_are_imported(
    command: list[str], expected_status: int
):
    process = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", *command],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={"COMP_LINE": "stn-train mod", "COMP_POINT": "15", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert process.returncode == expected_status, process.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in process.stderr.splitlines() if "|" in line}
    assert "torch" not in imported and "lightning" not in imported
    assert "optuna" not in imported and "gradio" not in imported  # the sweeps and demo extras: when used
    if command[1:] == ["model=stnn"]:
        said = [line for line in process.stderr.splitlines() if not line.startswith("import time:")]
        assert len(said) == 1 and said[0].startswith("error: model=stnn is not an option of the model group")


@pytest.mark.slow
def test_an_empty_run_dir_or_a_root_that_is_a_file_is_one_sentence(tmp_path):
    """`hydra.run.dir=` would train into the folder the command started from; STN_ROOT at a file
    cannot hold a run folder: each is refused before anything is written."""
    import os

    (tmp_path / "root").write_text("a file, not a folder")
    for args, env, sentence in [
        (["hydra.run.dir="], {}, "error: hydra.run.dir is empty, which would write the run into the folder"),
        ([], {"STN_ROOT": str(tmp_path / "root")}, "cannot be created (Not a directory); STN_ROOT"),
    ]:
        process = subprocess.run(
            [sys.executable, "-m", "stn.train", *args], cwd=tmp_path, capture_output=True, text=True,
            timeout=120, env={**os.environ, **env},
        )  # fmt: skip
        assert process.returncode == 1 and sentence in process.stderr and "Traceback" not in process.stderr
        assert sorted(p.name for p in tmp_path.iterdir()) == ["root"]  # nothing written where it started


def test_a_torchvision_of_another_torch_is_one_sentence(monkeypatch):
    """What a mismatched pair does at torchvision's first import, turned into one sentence."""
    import builtins

    from stn.entry import check_torch_pair
    from stn.errors import ConfigError

    real_import = builtins.__import__

    def mismatched(name, *args, **kwargs):
        if name == "torchvision":
            raise RuntimeError("operator torchvision::nms does not exist")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", mismatched)
    with pytest.raises(
        ConfigError, match=r"torchvision .* cannot be imported beside torch .*not a matching pair"
    ):
        check_torch_pair()

    def out_of_memory(name, *args, **kwargs):  # a job whose memory limit is below what torch needs
        if name == "torchvision":
            raise ImportError("libtorchvision.so: failed to map segment from shared object")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", out_of_memory)
    with pytest.raises(ConfigError, match=r"ran out of memory while loading them .*hydra.launcher.mem_gb"):
        check_torch_pair()
    monkeypatch.setattr(builtins, "__import__", real_import)
    check_torch_pair()  # the installed pair imports


def test_a_fast_test_cannot_launch_a_python_process():
    """The fast lane stays fast by construction (conftest's guard): outside `slow`, it fails."""
    with pytest.raises(AssertionError, match="mark it @pytest.mark.slow"):
        subprocess.run([sys.executable, "-c", "pass"], check=False)
    assert subprocess.run(["true"], check=False).returncode == 0  # other programs still run


def test_help_names_the_command_it_is_for():
    from .conftest import compose_config

    for config, command in (
        ("train.yaml", "stn.train"),
        ("eval.yaml", "stn.eval"),
        ("export.yaml", "stn.export"),
    ):
        cfg = compose_config(config)
        assert cfg.hydra.help.app_name == f"python -m {command}"  # `--help`'s first line names it
