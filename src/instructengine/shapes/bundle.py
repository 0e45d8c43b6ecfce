"""The ShapesWorld bundle: registers every ShapesWorld component in the library's registry.

Loaded through the ``instructengine.bundles`` entry point (``pyproject.toml``), so no library module
imports ShapesWorld; configs name its parts by these names:

=====================  =======================  ===============================================
registry kind          name                     what
=====================  =======================  ===============================================
generator              shapes_model             the tiny diffusion model (:mod:`.generators`)
generator              shapes_render            the (imperfect) renderer (:mod:`.generators`)
judge                  shapes_oracle            the exact oracle as the data pipeline's judge
scorer                 shapes_oracle            exact match, per attribute, share (:mod:`.scorers`)
scorer                 shapes_clip              the tiny contrastive model's cosine
scorer                 shapes_aesthetic         palette/cleanliness in [0, 1]
benchmark              shapesbench              200 held-out prompts in 6 categories
benchmark              shapesbench-60           60 of them, a seeded subset stratified by category
benchmark              shapesbench-xl           750 held-out prompts, none a validation prompt
validation_prompts     shapesbench-val          ShapesBench's generator, another seed, test removed
model                  shapes                   the training adapter (pixel-space U-Net)
tiny_model             shapes                   a tiny random-weight ShapesWorld-like model
instruction_backend    shapes_rules             the rule-based instruction backend
embedder               shapes_clip              the contrastive model's text tower
data_builder           shapes_foreign_pickapic  the world's Pick-a-Pic v2: foreign captions, reward-preferred pairs
cli                    shapes                   ``instructengine shapes render|judge|pretrain|...``
=====================  =======================  ===============================================
"""

from __future__ import annotations

from typing import Any

COMPONENTS: dict[str, dict[str, str]] = {
    "generator": {
        "shapes_model": "instructengine.shapes.generators:ShapesModelGenerator",
        "shapes_render": "instructengine.shapes.generators:ShapesRenderGenerator",
    },
    "judge": {"shapes_oracle": "instructengine.shapes.judge:make_oracle_judge"},
    "scorer": {
        "shapes_oracle": "instructengine.shapes.scorers:make_oracle",
        "shapes_clip": "instructengine.shapes.scorers:make_clip",
        "shapes_aesthetic": "instructengine.shapes.scorers:make_aesthetic",
    },
    "benchmark": {"shapesbench": "instructengine.shapes.bench:load_shapesbench",
                  "shapesbench-xl": "instructengine.shapes.bench:load_shapesbench_xl",
                  "shapesbench-60": "instructengine.shapes.bench:load_shapesbench_subset"},
    "validation_prompts": {"shapesbench-val": "instructengine.shapes.bench:validation_prompts"},
    "model": {"shapes": "instructengine.shapes.adapter:load_shapes_adapter"},
    "tiny_model": {"shapes": "instructengine.shapes.tiny:tiny_shapes_components"},
    "instruction_backend": {"shapes_rules": "instructengine.shapes.instructions:ShapesRuleBackend"},
    "embedder": {"shapes_clip": "instructengine.shapes.contrastive:ShapesClipScorer"},
    "data_builder": {"shapes_foreign_pickapic": "instructengine.shapes.foreign:write_foreign_pickapic"},
    "cli": {"shapes": "instructengine.shapes.cli:app"},
}


def register(registry: Any) -> None:
    """Entry point of the ``instructengine.bundles`` group: register every component above."""
    for kind, names in COMPONENTS.items():
        for name, target in names.items():
            registry.register(kind, name, target)
