"""Protocol presets: the paper's single better/tie judgement, per-criterion questions with safety, custom."""

import httpx
import pytest

from instructengine.config import ConfigError, load_config
from instructengine.humaneval.config import ReviewConfig
from instructengine.humaneval.server import background_server
from instructengine.humaneval.study import create_study

from .evaldirs import build_eval_run, current_task, review_config


def state_of(tmp_path, *overrides):
    runs = [build_eval_run(tmp_path, m, n_prompts=2, style=k) for k, m in enumerate(["ie", "sd"])]
    made = create_study(review_config(tmp_path, runs, "study.annotators=[a]", "study.annotators_per_item=1", *overrides))
    return made


def test_paper_protocol_is_one_better_or_tie_choice_over_four_aspects(tmp_path):
    made = state_of(tmp_path)  # the default
    t = made.annotator_tokens["a"]
    with background_server(made.database_url) as base, httpx.Client(base_url=base) as client:
        st = client.get(f"/api/a/{t}/state").json()
        assert st["criteria"] == [] and st["choices"] == ["left", "right", "tie"]
        (q,) = st["questions"]
        assert q["name"] == "overall"
        for aspect in ("aesthetics", "safety", "rationality", "consistency"):
            assert aspect in q["text"].lower()
        assert "both bad" not in st["instructions"].lower()
        task = current_task(client, t)
        bad = client.post(f"/api/a/{t}/votes", json={"task_id": task["id"], "choice": "both_bad"})
        assert bad.status_code == 422 and "'left', 'right' or 'tie'" in bad.text
        ok = client.post(f"/api/a/{t}/votes", json={"task_id": task["id"], "choice": "tie"})
        assert ok.json()["status"] == "recorded"


def test_per_criterion_protocol_asks_each_aspect_including_safety(tmp_path):
    made = state_of(tmp_path, "study.protocol=per_criterion")
    t = made.annotator_tokens["a"]
    with background_server(made.database_url) as base, httpx.Client(base_url=base) as client:
        st = client.get(f"/api/a/{t}/state").json()
        assert st["criteria"] == ["aesthetics", "safety", "rationality", "consistency"]
        assert st["choices"] == ["left", "right", "tie", "both_bad"]
        texts = {q["name"]: q["text"] for q in st["questions"]}
        assert list(texts) == [*st["criteria"], "overall"]
        assert len(set(texts.values())) == 5  # each question has its own text
        assert "safe" in texts["safety"].lower() and "harm" in texts["safety"].lower()
        assert all(name in text.lower() for name, text in texts.items() if name != "overall")
        task = current_task(client, t)
        body = {"task_id": task["id"], "choice": "left", "criteria": {c: "tie" for c in st["criteria"]}}
        assert client.post(f"/api/a/{t}/votes", json=body).json()["status"] == "recorded"


def test_custom_criteria_need_their_own_question(tmp_path):
    with pytest.raises(ConfigError, match=r"study.questions.*humor"):
        load_config(ReviewConfig, None, ["study.protocol=custom", "study.criteria=[humor]"])
    with pytest.raises(ConfigError, match="protocol=custom"):
        load_config(ReviewConfig, None, ["study.criteria=[consistency]"])  # paper protocol has no criteria
    with pytest.raises(ConfigError, match="unknown"):
        load_config(ReviewConfig, None, ["study.protocol=custom", "study.criteria=[realism]",
                                         "study.questions={humour: 'Which is funnier?'}"])
    made = state_of(tmp_path, "study.protocol=custom", "study.criteria=[humor,realism]",
                    "study.questions={humor: 'Humor: which image is funnier?', overall: 'Which do you like more?'}")
    t = made.annotator_tokens["a"]
    with background_server(made.database_url) as base, httpx.Client(base_url=base) as client:
        st = client.get(f"/api/a/{t}/state").json()
    texts = {q["name"]: q["text"] for q in st["questions"]}
    assert texts["humor"] == "Humor: which image is funnier?" and texts["overall"] == "Which do you like more?"
    assert texts["realism"].startswith("Realism:")
