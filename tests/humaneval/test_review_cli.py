import json

import httpx

from instructengine.humaneval.cli import main
from instructengine.humaneval.server import background_server

from .evaldirs import build_eval_run, current_task


def test_create_vote_and_results_through_the_cli(tmp_path, capsys):
    runs = [build_eval_run(tmp_path, m, n_prompts=5, style=k) for k, m in enumerate(["ie", "sd15", "dpo"])]
    study_dir = tmp_path / "study"
    common = [f"study_dir={study_dir}", "study.annotators=[ann1,ann2]", "study.annotators_per_item=2",
              "study.criteria=[]", "results.bootstrap=200"]
    code = main(["create", *common, "study.runs=[" + ",".join(map(str, runs)) + "]"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "3 systems, 5 items, 15 comparisons, 30 tasks" in out and "/admin/" in out and "ann1: http://127.0.0.1:8765/a/" in out
    tokens = json.loads((study_dir / "tokens.json").read_text())["study"]
    db_url = f"sqlite:///{(study_dir / 'study.db').resolve()}"
    with background_server(db_url) as base, httpx.Client(base_url=base) as client:
        for name in ("ann1", "ann2"):
            a = f"/api/a/{tokens['annotators'][name]['token']}"
            for k in range(8):
                task = current_task(client, tokens['annotators'][name]['token'])
                client.post(f"{a}/votes", json={"task_id": task["id"], "choice": ["left", "right", "tie"][k % 3]}).raise_for_status()
    code = main(["results", *common])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "16 votes of 30 tasks" in out and "Bradley-Terry" in out and "Krippendorff" in out
    res_dir = study_dir / "results"
    res = json.loads((res_dir / "results.json").read_text())
    assert res["n_votes"] == 16 and len(res["criteria"]["overall"]["pairs"]) == 3
    assert len(res["criteria"]["overall"]["bradley_terry"]) == 3
    assert len(json.loads((res_dir / "votes.json").read_text())) == 16
    assert (res_dir / "votes.csv").read_text().count("\n") == 17
    assert (res_dir / "winrate.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_errors_are_clear(tmp_path, capsys):
    a = build_eval_run(tmp_path, "a", seeds=(0,))
    b = build_eval_run(tmp_path, "b", seeds=(1,))
    code = main(["create", f"study_dir={tmp_path / 's'}", f"study.runs=[{a},{b}]"])
    err = capsys.readouterr().err
    assert code == 2 and "do not share prompts and seeds" in err
    assert main(["create", "study.nope=1"]) == 2
    assert "unknown field" in capsys.readouterr().err
    assert main(["results", f"study_dir={tmp_path / 'missing'}"]) == 2
    assert "run `review create` first" in capsys.readouterr().err
