"""Blind human pairwise review of evaluation images: study creation, web app, results.

* :mod:`.config` — ``ReviewConfig`` (study / server / results sections).
* :mod:`.inputs` — read ``eval/<model_name>/<benchmark>`` folders and check they share prompts and seeds.
* :mod:`.study` — lay out comparisons and balanced task queues, issue secret links.
* :mod:`.db` — SQLAlchemy models; SQLite (WAL) by default, any SQLAlchemy URL.
* :mod:`.app` — the FastAPI app (annotator and admin pages + JSON API); :mod:`.server` runs it.
* :mod:`.stats` / :mod:`.results` — bootstrap win rates, Bradley-Terry, Krippendorff's alpha, chart, exports.
* :mod:`.cli` — ``review create | serve | results``.

Nothing heavy is imported here.
"""
