"""The instruction backend that asks an LLM (through :class:`ChatClient`), one prompt file per method."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from instructengine.llm.client import ChatClient
from instructengine.llm.messages import system_message, user_message
from instructengine.llm.prompts import PromptLibrary
from instructengine.llm.schemas import ConfirmAnswer, EntitiesAnswer, PairsAnswer, SubtopicsAnswer, ThemesAnswer

__all__ = ["LLMInstructionBackend"]

_TEMPLATES = ["system", "themes", "subtopics", "entities", "confirm_entity", "contrast_pairs"]


class LLMInstructionBackend:
    """:class:`instructengine.backends.InstructionBackend` over an OpenAI-compatible chat model.

    Lists are cut to the ``n`` asked for (a model often gives a few more); items are returned as
    the model wrote them (the stages clean and de-duplicate). Failures surface as the client's
    DropItem subclasses or, for a rejected request, :class:`PermanentLLMError`.
    """

    def __init__(self, client: ChatClient, prompts: PromptLibrary | None = None):
        self.client = client
        self.prompts = prompts or PromptLibrary(client.cfg.prompts_dir)
        cfg = client.cfg
        self.fingerprint = (
            f"llm:{cfg.model}:t={cfg.temperature}:max_tokens={cfg.max_tokens}:seed={cfg.seed}:"
            f"{cfg.structured_output}:prompts={self.prompts.digest(_TEMPLATES)}"
        )

    def usage(self) -> dict[str, Any]:
        return self.client.usage.snapshot()

    def usage_totals(self, schemas: list[str]) -> dict[str, int]:
        """HTTP requests for these answer schemas over every run sharing the cache (see the client)."""
        return self.client.usage_totals(schemas)

    def _seed(self, sample: int) -> int | None:
        base = self.client.cfg.seed
        return None if base is None else base + sample

    async def _ask(self, template: str, schema: type[BaseModel], sample: int = 0, **variables: Any) -> Any:
        messages = [
            system_message(self.prompts.render("system")),
            user_message(self.prompts.render(template, **variables)),
        ]
        return await self.client.complete_json(messages, schema, seed=self._seed(sample))

    async def propose_themes(self, seeds: list[str], n: int, sample: int) -> list[str]:
        answer = await self._ask("themes", ThemesAnswer, sample, seeds=seeds, n=n)
        return answer.themes[:n]

    async def propose_subtopics(self, theme: str, axis: str, n: int, sample: int) -> list[str]:
        answer = await self._ask("subtopics", SubtopicsAnswer, sample, theme=theme, axis=axis, n=n)
        return answer.subtopics[:n]

    async def propose_entities(self, theme: str, subtopic: str, n: int) -> list[str]:
        answer = await self._ask("entities", EntitiesAnswer, theme=theme, subtopic=subtopic, n=n)
        return answer.entities[:n]

    async def confirm_entity(self, theme: str, subtopic: str, entity: str) -> bool:
        answer = await self._ask("confirm_entity", ConfirmAnswer, theme=theme, subtopic=subtopic, entity=entity)
        return answer.belongs

    async def contrast_pairs(
        self, theme: str, subtopic: str, entity: str, dimension: str, n: int
    ) -> list[tuple[str, str]]:
        answer = await self._ask(
            "contrast_pairs", PairsAnswer, theme=theme, subtopic=subtopic, entity=entity, dimension=dimension, n=n
        )
        return [(p.instruction_1, p.instruction_2) for p in answer.pairs[:n]]
