"""stn: Spatial Transformer Networks (Jaderberg et al., 2015) with PyTorch Lightning and Hydra."""

import os
from pathlib import Path

__version__ = "0.1.0"

# the project root that conf/paths/default.yaml reads (root_dir: ${oc.env:STN_ROOT}): the folder
# that holds stn/ and conf/, wherever the command is run from; set STN_ROOT to put runs elsewhere
os.environ.setdefault("STN_ROOT", str(Path(__file__).resolve().parents[1]))
