#!/usr/bin/env bash
# The wheels a lent GPU machine lacks (it has torch, lightning, torchmetrics, torchvision,
# tensorboard, numpy, scipy, pyyaml, tqdm, packaging, rich, joblib and cloudpickle, and no registry):
# downloaded here for its Python 3.12 into .whl/ (git-ignored), to travel with `carry: [".whl"]`.
#   bash benchmarks/wheels.sh
# then on the machine, first in the command:
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
platforms=()
for n in 2_17 2_27 2_28 2_34; do platforms+=(--platform "manylinux_${n}_x86_64"); done
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${platforms[@]}" --platform manylinux2014_x86_64 -d .whl \
  hydra-core==1.3.8 omegaconf==2.3.1 optuna==5.1.0 \
  hydra-joblib-launcher==1.2.0 hydra-submitit-launcher==1.2.0 submitit==1.5.4 \
  "sqlalchemy==2.1.9" "alembic==1.20.1" "Mako==1.4.3" "greenlet==3.5.6" \
  "colorlog==6.12.0" "typing_extensions==4.16.0"
# (optuna's command-line tool, cliff and its own dependencies, is not imported by the sweeper)
# antlr4-python3-runtime 4.9.3 (what omegaconf 2.3 needs) is a source package: build its wheel
python3 -m pip wheel --quiet --no-deps -w .whl antlr4-python3-runtime==4.9.3
ls .whl
du -sh .whl
