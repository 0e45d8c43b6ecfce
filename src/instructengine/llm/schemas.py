"""The JSON answers the text-stage prompts ask for (each call states one of these schemas)."""

from __future__ import annotations

from typing import Annotated, ClassVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

__all__ = ["ConfirmAnswer", "EntitiesAnswer", "InstructionPairAnswer", "PairsAnswer", "SubtopicsAnswer", "ThemesAnswer"]

Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
Instruction = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=1000)]


class ThemesAnswer(BaseModel):
    schema_name: ClassVar[str] = "themes"
    themes: list[Name] = Field(min_length=1)


class SubtopicsAnswer(BaseModel):
    schema_name: ClassVar[str] = "subtopics"
    subtopics: list[Name] = Field(min_length=1)


class EntitiesAnswer(BaseModel):
    schema_name: ClassVar[str] = "entities"
    entities: list[Name] = Field(min_length=1)


class ConfirmAnswer(BaseModel):
    schema_name: ClassVar[str] = "confirm_entity"
    belongs: bool
    reason: str = ""


class InstructionPairAnswer(BaseModel):
    model_config = ConfigDict(extra="ignore")
    instruction_1: Instruction
    instruction_2: Instruction


class PairsAnswer(BaseModel):
    schema_name: ClassVar[str] = "contrast_pairs"
    pairs: list[InstructionPairAnswer] = Field(min_length=1)
