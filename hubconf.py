"""torch.hub entries: one per model of the zoo (zoo/manifest.json), each a pretrained network that
takes raw pixels.

    model = torch.hub.load("<a clone of this repository>", "stn_mnist", source="local")
    logits = model(pixels)  # (N, 1, S, S) in [0, 1], white digit on black, S its canvas -> (N, 10)

The weights are the zoo's safetensors, checked against the manifest's sha256 before they are read
(no pickle). Each entry's docstring gives its data, canvas and test accuracy.
"""

# imported under private names: torch.hub lists every public callable of this module as an entry
import json as _json
from pathlib import Path as _Path

# what torch.hub checks is importable before it loads an entry
dependencies = ["torch", "torchvision", "lightning", "torchmetrics", "hydra", "omegaconf", "safetensors"]

_ZOO = _Path(__file__).resolve().parent / "zoo"  # the zoo of this clone


def _entry(name: str, facts: dict):
    def load(pretrained: bool = True):
        if not pretrained:
            raise ValueError(f"{name} is a zoo model: it exists only with its trained weights")
        from stn.loading import zoo_model
        from stn.models.pixels import PixelClassifier

        trained = zoo_model(name, _ZOO)
        return PixelClassifier(trained.network, trained.mean, trained.std, trained.canvas).eval()

    load.__name__ = load.__qualname__ = name
    load.__doc__ = (
        f"{name}: trained on `{facts.get('data')}`, canvas {facts.get('canvas')}x{facts.get('canvas')}, "
        f"test accuracy {100 * float(facts.get('test_acc', 0)):.2f}% on the full test set of its data, "
        f"{facts.get('parameters', 0):,} parameters.\n\n"
        f"Takes (N, 1, {facts.get('canvas')}, {facts.get('canvas')}) float pixels in [0, 1] (white "
        "digit on black) and returns logits (N, 10); `.transform(pixels)` gives what the classifier "
        f"sees and theta. In eval mode. Trained by: {facts.get('command')}"
    )
    return load


for _name, _facts in _json.loads((_ZOO / "manifest.json").read_text())["models"].items():
    globals()[_name] = _entry(_name, _facts)
