import io
from pathlib import Path

import lightning as L
import numpy as np
from hydra.utils import instantiate
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from stn.callbacks import TransformGridLogger
from stn.pictures import BAND


def test_grid_logger_writes_images_that_read_back(cfg_train, tmp_path: Path):
    datamodule = instantiate(cfg_train.data)
    model = instantiate(cfg_train.model)
    logger = L.pytorch.loggers.TensorBoardLogger(save_dir=str(tmp_path), name="tb", version="")
    callback = TransformGridLogger(num_images=16, nrow=4, mean=0.1307, std=0.3081)
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=2,
        limit_train_batches=3,
        limit_val_batches=2,
        callbacks=[callback],
        logger=logger,
        enable_checkpointing=False,
        enable_progress_bar=False,
    )
    trainer.fit(model, datamodule=datamodule)
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0}).Reload()
    images = events.Images("val/transformed")
    assert len(images) == 2  # one per validation epoch, none for the sanity check
    # 16 images in a 4x4 grid of 28+2 px cells, twice side by side, each under its caption
    assert images[0].height == BAND + 4 * 30 + 2 and images[0].width == 2 * (4 * 30 + 2) + 4
    picture = np.asarray(Image.open(io.BytesIO(images[0].encoded_image_string)).convert("L"))
    half = 4 * 30 + 2
    for caption in (
        picture[:BAND, :half],
        picture[:BAND, half + 4 :],
    ):  # the words "input", "transformed: ..."
        assert (caption < 100).sum() > 20
    assert {"val/theta_distance_from_identity", "val/theta_scale"} <= set(events.Tags()["scalars"])
