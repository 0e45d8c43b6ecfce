"""Google's VILA-R aesthetic score (AGFSync's aesthetic term), run from its TensorFlow SavedModel.

VILA-R (Ke et al., CVPR 2023, "VILA: Learning Image Aesthetics from User Comments with
Vision-Language Pretraining") is published only as a TensorFlow Hub SavedModel
(``google/vila/image/1``, now under Kaggle Models); no maintained PyTorch port or pip package ships
its weights. This scorer therefore needs ``tensorflow`` (``pip install tensorflow-cpu``; it is not a
dependency of InstructEngine) and a local copy of that SavedModel folder, and repeats the steps
of AGFSync's ``dpo_dataset/aes_score.py``: load the SavedModel, call its ``serving_default``
signature with the image file's bytes, read ``predictions[0][0]`` (in [0, 1]; AGFSync stores it
x100, which is the baseline's ``scale: 100``).

AGFSync sends the PNG files as written by the generator; this scorer gets decoded images and
re-encodes them as PNG (lossless, so VILA decodes the same pixels).

Without tensorflow or the folder, the factory raises one line that says so. The nearest
substitute we ship is the LAION aesthetic predictor (scorer ``aesthetic``, 1-10): with a baseline
preset, ``preset_aesthetic: laion`` uses it x10. It is a different model (CLIP ViT-L/14 + MLP on
AVA/SAC/LAION-logos ratings), so the pairs it picks are not AGFSync's.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from instructengine.config import Config, validate_config
from instructengine.scorers.base import ScorerContext, check_batch

__all__ = ["VilaOptions", "VilaScorer", "make_vila"]

VILA_HUB = "google/vila/image/1 (TF Hub; Kaggle Models google/vila/tensorFlow2/image)"


class VilaOptions(Config):
    model_path: str = Field(..., description="local folder of the VILA-R SavedModel (saved_model.pb + variables/), "
                                             f"downloaded from {VILA_HUB}")
    signature: str = Field("serving_default", description="SavedModel signature to call (VILA-R: serving_default)")
    output_key: str = Field("predictions", description="output of the signature holding the score (VILA-R: predictions, shape (1, 1))")
    image_format: str = Field("PNG", description="how each image is encoded to the bytes VILA-R decodes (AGFSync: its PNG files)")


class VilaScorer:
    """``score(images, prompts)`` -> VILA-R aesthetic score in [0, 1] per image (prompts unused)."""

    name = "vila"
    columns = ("vila",)

    def __init__(self, fn: Any, options: VilaOptions, tf: Any):
        self.fn = fn
        self.options = options
        self.tf = tf
        inputs = fn.structured_input_signature[1]
        if len(inputs) != 1:
            raise ValueError(f"scorer vila: signature {options.signature!r} of {options.model_path} takes {sorted(inputs)}; "
                             "expected one input (VILA-R: image_bytes)")
        self.input_name = next(iter(inputs))
        self.info = {"model_path": options.model_path, "signature": options.signature, "input": self.input_name}

    def score(self, images, prompts) -> np.ndarray:
        check_batch(self.name, images, prompts)
        out = np.empty(len(images))
        for i, image in enumerate(images):
            buf = io.BytesIO()
            image.convert("RGB").save(buf, format=self.options.image_format)
            pred = self.fn(**{self.input_name: self.tf.constant(buf.getvalue())})
            if self.options.output_key not in pred:
                raise ValueError(f"scorer vila: the signature returned {sorted(pred)}, not {self.options.output_key!r}")
            out[i] = float(np.asarray(pred[self.options.output_key]).reshape(-1)[0])
        return out


def make_vila(options: dict[str, Any], ctx: ScorerContext) -> VilaScorer:
    """Load the VILA-R SavedModel named by ``options.model_path`` (once per run).

    Raises:
        ValueError: no ``model_path``, a folder that is not a SavedModel, or tensorflow not installed.
    """
    o = validate_config(VilaOptions, options, "scorer vila")
    path = Path(o.model_path)
    if not (path / "saved_model.pb").is_file():
        raise ValueError(f"scorer vila: {str(path)!r} is not a SavedModel folder (no saved_model.pb); "
                         f"download VILA-R from {VILA_HUB}")
    try:
        import tensorflow as tf
    except ImportError:
        raise ValueError("scorer vila: VILA-R runs only in TensorFlow and tensorflow is not installed "
                         "(pip install tensorflow-cpu); or use preset_aesthetic: laion (LAION predictor x10)") from None

    def load() -> Any:
        model = tf.saved_model.load(str(path))
        if o.signature not in model.signatures:
            raise ValueError(f"scorer vila: {path} has signatures {sorted(model.signatures)}, not {o.signature!r}")
        return model, model.signatures[o.signature]

    _model, fn = ctx.shared(("vila", str(path.resolve()), o.signature), load)  # the model object keeps fn alive
    return VilaScorer(fn, o, tf)
