"""The VILA-R scorer: its one-line errors, and (where tensorflow is installed) a tiny SavedModel in
VILA-R's interface (``serving_default(image_bytes: string) -> {"predictions": (1, 1)}``) scored as
AGFSync's aes_score.py scores it."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from PIL import Image

from instructengine.scorers import ScorerContext, build_scorer

HAS_TF = importlib.util.find_spec("tensorflow") is not None


def test_vila_needs_a_savedmodel_folder(tmp_path):
    with pytest.raises(ValueError, match=r"is not a SavedModel folder \(no saved_model.pb\); download VILA-R"):
        build_scorer("vila", {"model_path": str(tmp_path / "nowhere")}, ScorerContext())
    with pytest.raises(ValueError, match="model_path"):
        build_scorer("vila", {}, ScorerContext())


@pytest.mark.skipif(HAS_TF, reason="tensorflow is installed here")
def test_vila_without_tensorflow_says_so_in_one_line(tmp_path):
    (tmp_path / "saved_model.pb").write_bytes(b"")
    with pytest.raises(ValueError) as err:
        build_scorer("vila", {"model_path": str(tmp_path)}, ScorerContext())
    msg = str(err.value)
    assert "\n" not in msg and "tensorflow is not installed" in msg and "preset_aesthetic: laion" in msg


def _tiny_vila(path):
    """A SavedModel with VILA-R's signature: the score is a fixed mix of the decoded image's channel means."""
    import tensorflow as tf

    class Tiny(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([], tf.string, name="image_bytes")])
        def serve(self, image_bytes):
            img = tf.cast(tf.io.decode_image(image_bytes, channels=3, expand_animations=False), tf.float32) / 255.0
            means = tf.reduce_mean(img, axis=[0, 1])
            score = 0.5 * means[0] + 0.3 * means[1] + 0.2 * means[2]
            return {"predictions": tf.reshape(score, [1, 1])}

    m = Tiny()
    tf.saved_model.save(m, str(path), signatures={"serving_default": m.serve})
    return path


@pytest.mark.skipif(not HAS_TF, reason="needs tensorflow (VILA-R is a TensorFlow SavedModel)")
def test_vila_scores_like_agfsyncs_aes_score(tmp_path):
    import tensorflow as tf

    model_dir = _tiny_vila(tmp_path / "vila")
    rng = np.random.default_rng(0)
    images, files = [], []
    for i in range(3):
        im = Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8))
        files.append(tmp_path / f"{i}.png")
        im.save(files[-1])
        images.append(Image.open(files[-1]).convert("RGB"))
    got = build_scorer("vila", {"model_path": str(model_dir)}, ScorerContext()).score(images, ["p"] * 3) * 100
    # aes_score.py: hub.load(path).signatures['serving_default'] on the PNG file's bytes, predictions[0][0] * 100
    predict_fn = tf.saved_model.load(str(model_dir)).signatures["serving_default"]
    expected = []
    for f in files:
        predictions = predict_fn(image_bytes=tf.constant(f.read_bytes()))
        expected.append(float(predictions["predictions"].numpy()[0][0]) * 100)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    # and by hand from the pixels
    by_hand = [100 * float((np.asarray(im, dtype=np.float32) / 255.0).mean(axis=(0, 1)) @ np.array([0.5, 0.3, 0.2])) for im in images]
    np.testing.assert_allclose(got, by_hand, rtol=1e-5)
