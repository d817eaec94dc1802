"""Predict the digits in your own images with a trained STN, and see where its transformer looked.

    python -m stn.predict ckpt_path=outputs/train/runs/<run>/checkpoints/last.ckpt inputs=my_digits/
    python -m stn.predict model_name=stn_mnist inputs='scans/*.jpg' invert=auto

What it writes: stn/inference/predict.py; the keys: conf/predict.yaml."""

from stn.entry import entry

cli = entry(
    "predict.yaml", "stn.inference.predict:predict"
)  # `stn-predict`, and `python -m stn.predict` below

if __name__ == "__main__":
    cli()
