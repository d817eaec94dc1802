"""A page where you draw a digit (or upload a photo of one) and watch the transformer at work.

    python -m stn.demo                                 # the zoo's stn_mnist on http://127.0.0.1:7860
    python -m stn.demo model_name=stn_rts port=7861    # any zoo name, or ckpt_path=<run>/checkpoints/x.ckpt

The page: stn/inference/demo.py; the keys: conf/demo.yaml (the demo extra: pip install -e ".[demo]")."""

from stn.entry import entry

cli = entry("demo.yaml", "stn.inference.demo:serve")  # `stn-demo`, and `python -m stn.demo` below

if __name__ == "__main__":
    cli()
