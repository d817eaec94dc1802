"""torch.hub from a clone, offline: one entry per zoo model, each a pretrained network in eval mode
that takes [0, 1] pixels at its canvas and returns logits, and that still scores on real digits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from stn.paths import ROOT, ZOO_DIR


def test_every_zoo_model_has_a_hub_entry_with_its_facts():
    zoo = json.loads((ZOO_DIR / "manifest.json").read_text())["models"]
    # what torch.hub.list and torch.hub.help read (they take GitHub names only): the public callables
    hub = torch.hub._import_module("hubconf", str(ROOT / "hubconf.py"))
    entries = [name for name in dir(hub) if callable(getattr(hub, name)) and not name.startswith("_")]
    assert sorted(entries) == sorted(zoo)
    doc = hub.stn_rts.__doc__
    assert "mnist_rts" in doc and "42x42" in doc and f"{100 * zoo['stn_rts']['test_acc']:.2f}%" in doc


def test_a_hub_model_classifies_real_digits_from_raw_pixels(mnist_dir: Path):
    from stn.data import MNISTDataModule

    model = torch.hub.load(str(ROOT), "stn_mnist", source="local", trust_repo=True)
    assert isinstance(model, torch.nn.Module) and not model.training
    datamodule = MNISTDataModule(data_dir=str(mnist_dir), test_subset=512)
    datamodule.prepare_data()
    datamodule.setup("test")
    pixels = datamodule.test_set.images.float() / 255  # (N, 1, 28, 28) in [0, 1]
    with torch.no_grad():
        logits = model(pixels)
    assert logits.shape == (512, 10)
    accuracy = (logits.argmax(1) == datamodule.test_set.labels).float().mean().item()
    assert accuracy > 0.97
    seen, theta = model.transform(pixels[:4])
    assert seen.shape == (4, 1, 28, 28) and theta.shape == (4, 2, 3)
    # what it cannot answer is said, never answered wrongly or failed deep inside
    eight_bit = datamodule.test_set.images[:4]  # uint8 0..255
    with pytest.raises(ValueError, match=r"got torch.uint8: divide 8-bit pixels by 255 first"):
        model(eight_bit)
    with pytest.raises(ValueError, match=r"these pixels span 0..255: divide 8-bit pixels by 255 first"):
        model(eight_bit.float())
    with pytest.raises(ValueError, match=r"these pixels span -0.5..0.5$"):
        model(pixels[:4] - 0.5)
    with pytest.raises(ValueError, match=r"its canvas is 28x28\); got shape \(4, 1, 42, 42\)"):
        model(torch.zeros(4, 1, 42, 42))
    with pytest.raises(ValueError, match=r"\(N, 1, 28, 28\) float pixels .*; got shape \(28, 28\)"):
        model.transform(torch.zeros(28, 28))


def test_a_changed_zoo_file_is_refused_through_the_hub(tmp_path: Path):
    import shutil

    from stn.errors import UserError

    clone = tmp_path / "clone"
    shutil.copytree(ROOT / "zoo", clone / "zoo")
    shutil.copy(ROOT / "hubconf.py", clone / "hubconf.py")
    (clone / "zoo" / "stn_mnist.safetensors").write_bytes(b"not the weights")
    with pytest.raises(UserError, match="does not match its sha256"):
        torch.hub.load(str(clone), "stn_mnist", source="local", trust_repo=True)


def test_the_citation_names_the_project_and_both_papers():
    import yaml

    citation = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert citation["cff-version"] == "1.2.0" and citation["title"].startswith("stn")
    titles = {reference["title"] for reference in citation["references"]}
    assert titles == {"Spatial Transformer Networks", "Inverse Compositional Spatial Transformer Networks"}
