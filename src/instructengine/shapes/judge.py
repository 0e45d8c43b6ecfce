"""ShapesWorld's exact oracle as the data pipeline's judge (registered as ``judge.kind: shapes_oracle``):
keeps exact matches; otherwise the reason names the first failing attribute (``oracle:count``,
``oracle:colour``, ...)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from instructengine.images.judge import Verdict

__all__ = ["OracleJudge", "make_oracle_judge"]


class OracleJudge:
    """ShapesWorld's exact oracle (``instructengine.shapes.oracle.judge``)."""

    fingerprint = "shapes-oracle-v1"

    def judge_one(self, path: Path, prompt: str) -> Verdict:
        import numpy as np

        from instructengine.images.scorers import load_rgb
        from instructengine.shapes.oracle import ATTRIBUTES, judge
        from instructengine.shapes.scene import CaptionError

        try:
            verdict = judge(np.asarray(load_rgb(path)), prompt)
        except CaptionError as err:
            return Verdict(False, "oracle:not_a_caption", str(err)[:200])
        detail = json.dumps({k: v for k, v in verdict.items() if v is not None}, sort_keys=True)
        if verdict["exact"]:
            return Verdict(True, "ok", detail)
        first = next(a for a in ATTRIBUTES if verdict.get(a) is False)
        return Verdict(False, f"oracle:{first}", detail)

    async def judge_many(self, items: Sequence[tuple[Path, str]]) -> list[Verdict]:
        return [self.judge_one(path, prompt) for path, prompt in items]


def make_oracle_judge(cfg: Any, stage_root: Path) -> OracleJudge:
    return OracleJudge()
