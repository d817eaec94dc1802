"""Using a trained model: test it (evaluate.py), predict on your images and see where the
transformer looked (predict.py), export it (export.py), serve a page that does it as you draw
(demo.py). The commands over them (stn/eval.py, predict.py, export.py, demo.py) are thin and import
none of this until they run, so `--cfg`, `--help` and a refused command line answer before torch
is imported."""
