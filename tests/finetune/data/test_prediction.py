"""finetune.data.prediction: images to predict on, decoded and resized as training does."""

import numpy as np
import pytest
from PIL import Image

from finetune.data import SkippedImageWarning, discover, list_images, load_images_for_prediction, load_split
from finetune.errors import FinetuneError
from tests.conftest import write_image_folder
from tests.finetune.data.images import noisy


def test_prediction_inputs_skip_hidden_and_bad_files(tmp_path):
    folder = tmp_path / "photos"
    (folder / "nested").mkdir(parents=True)
    Image.fromarray(noisy(20)).save(folder / "b.jpg")
    Image.fromarray(noisy(30)).save(folder / "nested" / "a.png")
    (folder / ".DS_Store").write_bytes(b"x")
    (folder / "notes.txt").write_text("hello")
    assert list_images(folder) == [folder / "b.jpg", folder / "nested" / "a.png", folder / "notes.txt"]
    with pytest.warns(SkippedImageWarning, match="notes.txt"):
        images, paths, skipped = load_images_for_prediction([folder], 16)
    assert images.shape == (2, 16, 16, 3) and paths == [str(folder / "b.jpg"), str(folder / "nested" / "a.png")]
    assert skipped[0]["path"] == str(folder / "notes.txt") and "not an image" in skipped[0]["reason"]
    # Prediction and training decode and resize alike.
    data = discover(str(write_image_folder(tmp_path / "train", per_class=2, size=20)), val_fraction=0.0)
    loaded = load_split(data, "train", 16, cache=False, verbose=0)
    again, _, _ = load_images_for_prediction(loaded.paths, 16)
    np.testing.assert_array_equal(loaded.images, again)
    with pytest.raises(FinetuneError, match="does not exist"):
        list_images(tmp_path / "nowhere")
