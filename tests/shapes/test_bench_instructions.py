"""ShapesBench is fixed and disjoint from every training prompt; the rule backend follows the protocol."""

import asyncio

import numpy as np
import pandas as pd
import pytest

from instructengine.backends import InstructionBackend
from instructengine.data.schema import DIMENSIONS
from instructengine.shapes.bench import CATEGORIES, generate_shapesbench, load_shapesbench
from instructengine.shapes.instructions import ShapesRuleBackend
from instructengine.shapes.scene import SceneSampler, parse_caption, scene_is_heldout


def test_shipped_file_matches_the_generator():
    shipped = load_shapesbench()
    pd.testing.assert_frame_equal(shipped, generate_shapesbench())
    assert len(shipped) == 200 and shipped.prompt.is_unique
    assert shipped.category.value_counts().to_dict() == CATEGORIES


def test_every_bench_prompt_is_heldout_and_never_a_training_prompt():
    bench = set(load_shapesbench().prompt)
    assert all(scene_is_heldout(parse_caption(p)) for p in bench)
    sampler = SceneSampler(split="train", rng=np.random.default_rng(0))
    train = {sampler.draw().caption for _ in range(20000)}
    assert not bench & train


def test_xl_test_set_is_heldout_disjoint_from_validation_and_training():
    from instructengine.shapes.bench import load_shapesbench_xl

    xl = load_shapesbench_xl()
    assert len(xl) == 750 and xl.prompt.is_unique
    validation = set(generate_shapesbench(7).prompt)  # the shapesbench-val prompts come from this draw
    assert not validation & set(xl.prompt)
    assert all(scene_is_heldout(parse_caption(p)) for p in xl.prompt)
    sampler = SceneSampler(split="train", rng=np.random.default_rng(1))
    assert not {sampler.draw().caption for _ in range(20000)} & set(xl.prompt)


@pytest.mark.slow
def test_shipped_xl_file_matches_the_generator():
    from instructengine.shapes.bench import generate_shapesbench_xl, load_shapesbench_xl

    pd.testing.assert_frame_equal(load_shapesbench_xl(), generate_shapesbench_xl())


def _all_rule_pairs(backend):
    async def go():
        out = []
        for theme in await backend.propose_themes([], 10, 0):
            for axis in ("theme", "style", "time and space"):
                for sub in await backend.propose_subtopics(theme, axis, 10, 0):
                    for ent in await backend.propose_entities(theme, sub, 20):
                        if await backend.confirm_entity(theme, sub, ent):
                            for dim in DIMENSIONS:
                                out += await backend.contrast_pairs(theme, sub, ent, dim, 6)
        return out
    return asyncio.run(go())


def test_rule_backend_never_writes_a_bench_scene_and_pairs_contrast():
    backend = ShapesRuleBackend()
    assert isinstance(backend, InstructionBackend)
    pairs = _all_rule_pairs(backend)
    assert len(pairs) > 500
    bench = set(load_shapesbench().prompt)
    for x1, x2 in pairs:
        s1, s2 = parse_caption(x1), parse_caption(x2)
        assert x1 != x2 and not scene_is_heldout(s1) and not scene_is_heldout(s2)
        assert x1 not in bench and x2 not in bench


def test_confirm_rejects_off_topic_entities_and_dimensions_do_what_they_say():
    b = ShapesRuleBackend(off_topic_rate=0.5)

    async def go():
        ents = await b.propose_entities("circles", "red circles", 2)
        verdicts = [await b.confirm_entity("circles", "red circles", e) for e in ents]
        cf = await b.contrast_pairs("circles", "red circles", "small red circle", "counterfactual", 5)
        ae = await b.contrast_pairs("circles", "red circles", "small red circle", "aesthetics", 5)
        return ents, verdicts, cf, ae

    ents, verdicts, cf, ae = asyncio.run(go())
    for e, ok in zip(ents, verdicts):
        assert ok == (e.endswith("red circle") and e.split()[1] == "red")
    assert not asyncio.run(b.confirm_entity("circles", "red circles", "small blue circle"))
    for x1, x2 in cf:
        assert [g.intact for g in parse_caption(x1).groups] != [g.intact for g in parse_caption(x2).groups]
    for x1, x2 in ae:
        assert parse_caption(x1).palette == "vivid" and parse_caption(x2).palette == "dull"


def test_shapesbench_60_is_a_stratified_nested_subset():
    from instructengine import registry
    from instructengine.shapes.bench import load_shapesbench, load_shapesbench_subset

    full = load_shapesbench()
    sub = registry.resolve("benchmark", "shapesbench-60")()
    assert len(sub) == 60 and sub.prompt.is_unique and set(sub.prompt) <= set(full.prompt)
    # 34/34/33/33/33/33 prompts per category: 60 x m / 200 is 10.2 or 9.9, so 10 of each
    assert sub.category.value_counts().to_dict() == dict.fromkeys(full.category.unique(), 10)
    assert set(sub.prompt) < set(load_shapesbench_subset(100).prompt)
    order = {p: i for i, p in enumerate(full.prompt)}
    assert [order[p] for p in sub.prompt] == sorted(order[p] for p in sub.prompt)  # ShapesBench's order
    assert list(sub.prompt) != list(full.prompt[:60])
