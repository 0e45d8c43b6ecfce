"""The image half of the preference-data pipeline: candidates -> best-of-N -> judge -> dataset,
and the baseline data builders (reward best/worst-of-N, AGFSync's weighted multi-score).

Stages and what they read and write in a run folder (``<run_dir>``):

* ``candidates`` (:mod:`.candidates`): reads ``instructions/pairs.parquet``; writes
  ``candidates/images/<instruction_id>_<k>.png`` (one file per image, deterministic per-image
  seed) and ``candidates/candidates.parquet``. Shards across processes with accelerate.
* ``select`` (:mod:`.select`): best-of-N per instruction by an image-text scorer;
  ``select/selected.parquet``.
* ``judge`` (:mod:`.judge`): keeps or drops each selected image with a reason (VLM through
  :mod:`instructengine.llm`, or the ShapesWorld oracle); ``judge/judged.parquet``.
* ``dataset`` (:mod:`.dataset`): ``<dataset folder>/samples.parquet`` in the schema of
  :mod:`instructengine.data.schema`, the images it names, and a dataset card with the funnel
  and histograms (:mod:`.card`).
* ``baselines`` (:mod:`.baselines`): per baseline a folder the trainer reads as a candidates
  table (``prompt``, ``image``, ``reward``) plus explicit best/worst pairs.

Nothing heavy is imported here.
"""
