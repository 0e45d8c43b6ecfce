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


def _quiet_empty_fp32_warning() -> None:
    """diffusers warns on every ``model.to(dtype)`` that "there are modules ... that should be kept in
    float32: []" even when that list is empty (every load and cast of a U-Net in a run printed it);
    drop only that empty-list case, so a model with real float32-only modules still warns."""
    import logging

    class _EmptyListOnly(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return "should be kept in float32: []" not in record.getMessage()

    logging.getLogger("diffusers.models.modeling_utils").addFilter(_EmptyListOnly())


_quiet_empty_fp32_warning()
