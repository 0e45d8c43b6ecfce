"""review.csv: export, edit (rename / delete / merge / add), read back; and its place in the pipeline."""

import csv
import io

import pytest
from text_stage_helpers import small_config

from instructengine.taxonomy import (
    ReviewError,
    Subtopic,
    Taxonomy,
    Theme,
    apply_review,
    export_review,
    load_reviewed_taxonomy,
    read_review,
)
from instructengine.text_pipeline import run_text_stages


def sample_taxonomy() -> Taxonomy:
    return Taxonomy(
        axes=["theme", "style"],
        themes=[
            Theme(name="animals", source="seed", subtopics=[
                Subtopic(name="farm animals", axis="theme"),
                Subtopic(name="wild animals", axis="theme"),
                Subtopic(name="animals in watercolor", axis="style"),
                Subtopic(name="watercolour animals", axis="style"),
            ]),
            Theme(name="people", source="seed", subtopics=[
                Subtopic(name="portraits", axis="theme"),
                Subtopic(name="crowds", axis="theme"),
            ]),
            Theme(name="persons", source="proposed", subtopics=[
                Subtopic(name="portraits", axis="theme"),
                Subtopic(name="athletes", axis="theme"),
            ]),
            Theme(name="vehicles", source="proposed", subtopics=[Subtopic(name="cars", axis="theme")]),
        ],
    )


def rows_of(text):
    return list(csv.DictReader(io.StringIO(text)))


def write_rows(path, rows):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["id", "theme", "subtopic", "axis", "action", "merge_into"])
        w.writeheader()
        w.writerows(rows)
    return path


def test_export_read_apply_without_edits_is_identity(tmp_path):
    tax = sample_taxonomy()
    path = tmp_path / "review.csv"
    path.write_text(export_review(tax))
    out, edits = apply_review(tax, read_review(path))
    assert out == tax and edits == {}
    rows = rows_of(path.read_text())
    assert rows[0] == {"id": "T001", "theme": "animals", "subtopic": "", "axis": "", "action": "keep", "merge_into": ""}
    assert rows[1]["id"] == "T001.S001" and rows[1]["subtopic"] == "farm animals"


def test_rename_delete_merge_add_round_trip(tmp_path):
    tax = sample_taxonomy()
    rows = rows_of(export_review(tax))
    by_id = {r["id"]: r for r in rows}
    by_id["T001.S002"]["subtopic"] = "wildlife"  # rename in place
    by_id["T001.S002"]["axis"] = "purpose"
    by_id["T001.S004"].update(action="merge", merge_into="T001.S003")  # merge by id
    by_id["T002.S002"]["action"] = "delete"  # delete by action
    by_id["T003"].update(action="merge", merge_into="people")  # merge a theme by name
    by_id["T002"]["theme"] = "people & portraits"  # rename a theme
    rows = [r for r in rows if r["id"] != "T004"]  # delete a theme by removing its row...
    rows = [r for r in rows if r["id"] != "T001.S001"]  # ...and a subtopic the same way
    rows.append({"id": "", "theme": "animals", "subtopic": "pets", "axis": "", "action": "add", "merge_into": ""})
    path = write_rows(tmp_path / "review.csv", rows)

    out, edits = apply_review(tax, read_review(path))
    names = {t.name: [s.name for s in t.subtopics] for t in out.themes}
    assert names == {
        "animals": ["wildlife", "animals in watercolor", "pets"],
        "people & portraits": ["portraits", "athletes"],
    }
    animals = out.themes[0]
    assert animals.subtopics[0].axis == "purpose" and animals.subtopics[0].aliases == ["wild animals"]
    assert animals.subtopics[1].aliases == ["watercolour animals"]
    assert animals.subtopics[2].axis == "review"
    people = out.themes[1]
    assert set(people.aliases) == {"people", "persons"}
    assert edits == {
        "added_subtopics": 1, "axis_changed": 1, "deleted_subtopics": 2, "deleted_themes": 1,
        "merged_subtopics": 1, "merged_themes": 1, "renamed_subtopics": 1, "renamed_themes": 1,
    }


def test_spreadsheet_bom_and_blank_lines_are_accepted(tmp_path):
    tax = sample_taxonomy()
    path = tmp_path / "review.csv"
    path.write_bytes(b"\xef\xbb\xbf" + export_review(tax).replace("\n", "\r\n", 3).encode() + b",,,,,\n")
    out, edits = apply_review(tax, read_review(path))
    assert out == tax and edits == {}


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda rows: rows[1].update(action="rename"), "action 'rename' is not one of keep, delete, merge, add"),
        (lambda rows: rows[1].update(id="T009.S001"), "unknown id 'T009.S001'"),
        (lambda rows: rows[1].update(action="merge"), "needs merge_into"),
        (lambda rows: rows[1].update(action="merge", merge_into="no such"), "is not a subtopic of theme 'animals'"),
        (lambda rows: (rows[1].update(action="merge", merge_into="T001.S003"), rows[3].update(action="delete")), "is itself marked 'delete'"),
        (lambda rows: rows[2].update(subtopic="farm animals"), "would have subtopic 'farm animals' twice"),
        (lambda rows: rows[0].update(theme=""), "empty name"),
        (lambda rows: rows[5].update(theme="animals"), "used by more than one kept theme"),
        (lambda rows: rows.append(dict(rows[1])), "appears twice"),
        (lambda rows: rows.append({"id": "", "theme": "plants", "subtopic": "ferns", "axis": "", "action": "", "merge_into": ""}), "not a kept theme"),
    ],
)
def test_bad_edits_are_named_with_their_line(tmp_path, edit, message):
    tax = sample_taxonomy()
    rows = rows_of(export_review(tax))
    edit(rows)
    path = write_rows(tmp_path / "review.csv", rows)
    with pytest.raises(ReviewError, match="review.csv") as info:
        apply_review(tax, read_review(path), source=str(path))
    assert message in str(info.value)


def test_missing_column_is_named(tmp_path):
    path = tmp_path / "review.csv"
    path.write_text("id,theme,subtopic\nT001,animals,\n")
    with pytest.raises(ReviewError, match=r"missing columns \['axis', 'action', 'merge_into'\]"):
        read_review(path)


def test_edited_review_feeds_the_next_stage_and_survives_a_rerun(server, tmp_path):
    cfg = small_config(tmp_path / "run", server.base_url)
    run_text_stages(cfg, ["taxonomy"])
    tax_dir = tmp_path / "run" / "taxonomy"
    rows = rows_of((tax_dir / "review.csv").read_text())
    keep_ids = {"T001", "T001.S001", "T001.S002", "T002", "T002.S001"}
    rows = [r for r in rows if r["id"] in keep_ids]
    rows[1]["subtopic"] = "famous faces"
    write_rows(tax_dir / "review.csv", rows)
    edited = (tax_dir / "review.csv").read_text()

    n = server.total
    manifests = run_text_stages(cfg, ["taxonomy", "entities"])
    assert server.total - n == manifests["entities"].extra["llm_usage"]["http_requests"]  # taxonomy asked nothing
    assert (tax_dir / "review.csv").read_text() == edited  # the person's edits were kept
    assert manifests["taxonomy"].extra["review_csv"].startswith("kept")
    import pandas as pd

    ent = pd.read_parquet(tmp_path / "run" / "entities" / "entities.parquet")
    assert sorted(set(zip(ent["theme"], ent["subtopic"]))) == sorted(
        {("people", "famous faces"), ("people", rows[2]["subtopic"]), ("animals", rows[4]["subtopic"])}
    )
    assert manifests["entities"].extra["review_edits"]["renamed_subtopics"] == 1
    reviewed, _ = load_reviewed_taxonomy(tax_dir)
    assert reviewed.n_subtopics == 3


def test_changed_taxonomy_moves_an_edited_review_aside(server, tmp_path):
    cfg = small_config(tmp_path / "run", server.base_url)
    run_text_stages(cfg, ["taxonomy"])
    tax_dir = tmp_path / "run" / "taxonomy"
    rows = rows_of((tax_dir / "review.csv").read_text())
    rows[1]["action"] = "delete"
    write_rows(tax_dir / "review.csv", rows)
    cfg.taxonomy.subtopics_per_theme = 2
    manifests = run_text_stages(cfg, ["taxonomy"])
    assert "moved to review." in manifests["taxonomy"].extra["review_csv"]
    backups = list(tax_dir.glob("review.*.csv"))
    assert len(backups) == 1 and "delete" in backups[0].read_text()
    assert "delete" not in (tax_dir / "review.csv").read_text()
