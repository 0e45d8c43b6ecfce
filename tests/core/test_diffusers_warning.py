"""The one diffusers warning InstructEngine silences: "modules that should be kept in float32: []"
(the empty list, printed on every cast of a U-Net); a non-empty list still warns."""

import logging

import torch

import instructengine  # noqa: F401  (installs the filter)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_casting_a_unet_prints_no_empty_float32_list() -> None:
    from instructengine.train.tiny import tiny_sd15_components

    logger = logging.getLogger("diffusers.models.modeling_utils")
    handler = _Records()
    logger.addHandler(handler)
    try:
        unet = tiny_sd15_components(0)["unet"]  # the tiny SD1.5-layout U-Net the trainer tests use
        unet.to(dtype=torch.float32)
        unet.to("cpu", torch.bfloat16)
        assert unet.dtype == torch.bfloat16
        assert not [m for m in handler.messages if "kept in float32" in m]
        logger.warning("There are modules in X that should be kept in float32: ['norm']. Casting directly ...")
        assert handler.messages == ["There are modules in X that should be kept in float32: ['norm']. Casting directly ..."]
    finally:
        logger.removeHandler(handler)
