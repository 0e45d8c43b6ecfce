"""InstructEngine: instruction-driven text-to-image alignment.

Layout: the library by stage (``taxonomy``, ``entities``, ``instructions``, ``images``, ``train``,
``evaluate``, ``humaneval``), the shared parts (``generation``: one generation stack; ``scorers``:
every image-text scorer; ``llm``; ``registry``: the one component registry), the experiments apart
(``experiments``: the main job, the ablation runner), and the backend bundles, which plug into the
registry through the ``instructengine.bundles`` entry points (ShapesWorld, the embedded offline
world, is one). Importing this package imports nothing heavy; each stage imports
torch/diffusers/transformers lazily.
"""

__version__ = "0.1.0"
