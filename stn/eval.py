"""Test a checkpoint: `python -m stn.eval ckpt_path=outputs/train/runs/<run>/checkpoints/last.ckpt`,
or a model of the zoo on the data it was trained on: `python -m stn.eval model_name=stn_mnist`.

What it tests and records: stn/inference/evaluate.py; the keys: conf/eval.yaml."""

from stn.entry import entry

cli = entry("eval.yaml", "stn.inference.evaluate:eval_task")  # `stn-eval`, and `python -m stn.eval` below

if __name__ == "__main__":
    cli()
