"""Where the project's own files are: its configs (conf/) and its model zoo (zoo/), beside stn/.

The entry points name conf/ by its absolute path, so Hydra finds it however a command starts:
`python -m stn.train`, the `stn-train` console script, or `python stn/train.py`."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "conf"
ZOO_DIR = ROOT / "zoo"
