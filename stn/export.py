"""Export a trained STN to a file that runs without this project: ONNX or TorchScript.

    python -m stn.export ckpt_path=outputs/train/runs/<run>/checkpoints/last.ckpt format=onnx
    python -m stn.export model_name=stn_mnist format=torchscript

What the file takes and returns: stn/inference/export.py; the keys: conf/export.yaml."""

from stn.entry import entry

cli = entry("export.yaml", "stn.inference.export:export")  # `stn-export`, and `python -m stn.export` below

if __name__ == "__main__":
    cli()
