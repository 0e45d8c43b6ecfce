"""InstructEngine: instruction-driven text-to-image alignment.

The library is split by stage (taxonomy, entities, instructions, images, train, evaluate,
humaneval) plus ShapesWorld (``instructengine.shapes``), the embedded offline world. Importing
this package imports nothing heavy; each stage imports torch/diffusers/transformers lazily.
"""

__version__ = "0.1.0"
