"""Gold / attention-check items (known-answer pairs) and excluding annotators from results."""

import io
import json

import httpx
import numpy as np
import pytest
from PIL import Image, ImageDraw
from sqlalchemy import select

from instructengine.config import ConfigError, load_config
from instructengine.humaneval import db
from instructengine.humaneval.config import ResultsConfig, ReviewConfig
from instructengine.humaneval.inputs import StudyInputError
from instructengine.humaneval.results import excluded_annotators, find_study, write_exports
from instructengine.humaneval.server import background_server
from instructengine.humaneval.study import create_study, interleave_gold

from .evaldirs import build_eval_run, current_task, review_config

CONFIGURED_PROMPT = "a black square on white"


def pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def configured_pair(tmp_path):
    better, worse = tmp_path / "gold-better.png", tmp_path / "gold-worse.png"
    im = Image.new("RGB", (64, 64), "white")
    ImageDraw.Draw(im).rectangle([16, 16, 48, 48], fill="black")
    im.save(better)
    Image.new("RGB", (64, 64), (128, 128, 128)).save(worse)
    return better, worse


@pytest.fixture
def gold_study(tmp_path):
    runs = [build_eval_run(tmp_path, m, n_prompts=4, style=k) for k, m in enumerate(["ie", "sd"])]
    better, worse = configured_pair(tmp_path)
    cfg = review_config(
        tmp_path, runs, "study.annotators=[good,bad]", "study.annotators_per_item=2", "study.gold.degraded=2",
        f"study.gold.pairs=[{{prompt: '{CONFIGURED_PROMPT}', better: '{better}', worse: '{worse}'}}]",
    )
    made = create_study(cfg)
    originals = [pixels(p.read_bytes()) for r in runs for p in (r / "images").glob("*.png")]
    originals.append(pixels(better.read_bytes()))
    return cfg, made, originals


def is_original(px, originals) -> bool:
    return any(o.shape == px.shape and np.array_equal(o, px) for o in originals)


def gold_task_ids(made) -> dict[int, bool]:
    """task id -> better image on the left, for every gold task (read from the database)."""
    engine = db.make_engine(made.database_url)
    reader, _ = db.make_sessions(engine)
    with reader() as s:
        out = dict(s.execute(select(db.Task.id, db.Task.a_on_left).where(db.Task.gold_id.is_not(None))).all())
    engine.dispose()
    return out


def test_gold_items_are_placed_spread_and_look_like_tasks(gold_study):
    cfg, made, originals = gold_study
    assert made.n_tasks == 2 * (4 + 3)  # 4 comparisons + 2 degraded + 1 configured gold per annotator
    gold = gold_task_ids(made)
    assert len(gold) == 6 and sum(gold.values()) in (2, 3, 4)  # better image on both sides
    with background_server(made.database_url) as base, httpx.Client(base_url=base) as client:
        t = made.annotator_tokens["good"]
        seen_gold, positions = 0, []
        while (task := current_task(client, t)) is not None:
            st = client.get(f"/api/a/{t}/state").json()
            assert set(st["task"]) == {"id", "position", "prompt", "left", "right"}
            assert "gold" not in json.dumps(st).lower()
            if task["id"] in gold:
                seen_gold += 1
                positions.append(task["position"])
                left, right = (pixels(client.get(task[s]).content) for s in ("left", "right"))
                better, worse = (left, right) if gold[task["id"]] else (right, left)
                assert is_original(better, originals)  # the known-better image is an untouched one
                assert not is_original(worse, originals)
                if task["prompt"] != CONFIGURED_PROMPT:  # degraded copy: same size, visibly blurred
                    assert worse.shape == better.shape
                    energy = [np.square(np.diff(x.astype(float), axis=1)).mean() for x in (worse, better)]
                    assert energy[0] < 0.5 * energy[1]  # blur removes most of the edge energy
            client.post(f"/api/a/{t}/votes", json={"task_id": task["id"], "choice": "tie"}).raise_for_status()
    assert seen_gold == 3 and positions != [0, 1, 2] and positions != [4, 5, 6]


def answer_all(client, made, gold):
    """'good' answers every gold item right, 'bad' every one wrong; on real tasks good says left, bad right."""
    for name in ("good", "bad"):
        t = made.annotator_tokens[name]
        while (task := current_task(client, t)) is not None:
            if task["id"] in gold:
                right_answer = "left" if gold[task["id"]] else "right"
                wrong_answer = "right" if right_answer == "left" else "left"
                choice = right_answer if name == "good" else wrong_answer
            else:
                choice = "left" if name == "good" else "right"
            client.post(f"/api/a/{t}/votes", json={"task_id": task["id"], "choice": choice}).raise_for_status()


def test_gold_accuracy_in_admin_view_and_exclusion(gold_study):
    cfg, made, _ = gold_study
    gold = gold_task_ids(made)
    auto = load_config(ResultsConfig, None, ["min_gold_accuracy=0.5"])
    with background_server(made.database_url, results=auto) as base, httpx.Client(base_url=base, timeout=30) as client:
        answer_all(client, made, gold)
        adm = f"/api/admin/{made.admin_token}"
        res = client.get(f"{adm}/results").json()
        by = {p["annotator"]: p for p in res["progress"]}
        assert (by["good"]["gold_answered"], by["good"]["gold_correct"], by["good"]["gold_accuracy"]) == (3, 3, 1.0)
        assert (by["bad"]["gold_answered"], by["bad"]["gold_correct"], by["bad"]["gold_accuracy"]) == (3, 0, 0.0)
        assert by["good"]["done"] == by["good"]["total"] == 7
        assert by["bad"]["excluded"] and "gold accuracy 0%" in by["bad"]["excluded_reason"]
        assert not by["good"]["excluded"]
        # gold answers never count as results; the excluded annotator's votes neither
        assert res["n_tasks"] == 8 and res["n_gold_tasks"] == 6
        assert res["excluded_annotators"] == ["bad"] and res["n_votes"] == 4 and res["n_votes_excluded"] == 4
        assert len(client.get(f"{adm}/votes.json").json()) == 8  # the log keeps every comparison vote
        # choosing exclusions in the admin view: replaces the configured list, the gold rule stays
        both = client.get(f"{adm}/results", params={"exclude": "good"}).json()
        assert both["excluded_annotators"] == ["bad", "good"] and both["n_votes"] == 0
        chart = client.get(f"{adm}/chart.png", params={"exclude": "good"})
        assert chart.status_code == 200
        unknown = client.get(f"{adm}/results", params={"exclude": "mallory"})
        assert unknown.status_code == 422 and "mallory" in unknown.text and "good" in unknown.text
    with background_server(made.database_url) as base, httpx.Client(base_url=base, timeout=30) as client:
        res = client.get(f"/api/admin/{made.admin_token}/results").json()
        assert res["excluded_annotators"] == [] and res["n_votes"] == 8
        (pair,) = res["criteria"]["overall"]["pairs"]
        assert pair["n"] == 8


def test_exports_honour_the_results_config(gold_study, tmp_path):
    cfg, made, _ = gold_study
    gold = gold_task_ids(made)
    with background_server(made.database_url) as base, httpx.Client(base_url=base, timeout=30) as client:
        answer_all(client, made, gold)
    engine = db.make_engine(made.database_url)
    reader, _ = db.make_sessions(engine)
    with reader() as s:
        study = find_study(s, None)
        write_exports(s, study, tmp_path / "out", n_boot=200, exclude=["good"])
        res = json.loads((tmp_path / "out" / "results.json").read_text())
        with pytest.raises(LookupError, match="'nobody'.*bad.*good"):
            write_exports(s, study, tmp_path / "out2", n_boot=200, exclude=["nobody"])
    engine.dispose()
    assert res["excluded_annotators"] == ["good"] and res["n_votes"] == 4
    (pair,) = res["criteria"]["overall"]["pairs"]
    # 'bad' always chose the right-hand image: A wins exactly when A was on the right
    assert pair["n"] == 4 and pair["wins"] + pair["losses"] == 4


def test_excluded_annotators_rule():
    quality = [
        {"annotator": "a", "gold_answered": 4, "gold_correct": 4},
        {"annotator": "b", "gold_answered": 4, "gold_correct": 2},
        {"annotator": "c", "gold_answered": 0, "gold_correct": 0},
        {"annotator": "d", "gold_answered": 5, "gold_correct": 3},
    ]
    assert excluded_annotators(quality, [], None) == {}
    got = excluded_annotators(quality, ["c"], 0.6)
    assert set(got) == {"b", "c"}  # b: 50% < 60%; d: 60% is not below; c: chosen
    assert "50%" in got["b"] and "chosen" in got["c"]
    with pytest.raises(LookupError, match="'x'"):
        excluded_annotators(quality, ["x"], None)


def test_interleave_gold_spreads_items():
    for n_real, n_gold in ((10, 2), (4, 3), (0, 2), (7, 0), (50, 5)):
        slots = interleave_gold(n_real, n_gold, seed=1)
        total = n_real + n_gold
        assert len(slots) == n_gold == len(set(slots)) and all(0 <= s < total for s in slots)
        # one gold item per stretch of total / n_gold positions
        for j, s in enumerate(sorted(slots)):
            assert j * total // n_gold <= s < (j + 1) * total // n_gold
    assert interleave_gold(20, 3, seed=1) == interleave_gold(20, 3, seed=1)


def test_gold_config_is_checked(tmp_path):
    runs = [build_eval_run(tmp_path, m, n_prompts=2, style=k) for k, m in enumerate(["ie", "sd"])]
    with pytest.raises(ConfigError, match="better"):
        load_config(ReviewConfig, None, ["study.gold.pairs=[{prompt: x, worse: y.png}]"])
    missing = review_config(tmp_path, runs, "study.annotators=[a]", "study.annotators_per_item=1",
                            f"study.gold.pairs=[{{prompt: x, better: '{tmp_path}/nope.png', worse: '{tmp_path}/nope2.png'}}]")
    with pytest.raises(StudyInputError, match="nope.png"):
        create_study(missing)
