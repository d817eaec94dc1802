"""Train (then test) a model: `python -m stn.train model=stn trainer.max_epochs=20`.

What a run does and records: stn/training.py; the keys: conf/train.yaml (docs/config.md)."""

from stn.entry import entry

cli = entry("train.yaml", "stn.training:train_task")  # `stn-train`, and `python -m stn.train` below

if __name__ == "__main__":
    cli()
