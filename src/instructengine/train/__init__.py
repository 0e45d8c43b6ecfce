"""Alignment training: cross-validation DPO, its baselines, for SD1.5, SDXL and any model kind a bundle registers.

Modules (import the one you need; nothing heavy is imported here):

* ``losses``   -- pure loss functions over per-sample denoising errors and the table ``LOSSES``;
* ``methods``  -- the method table ``METHODS`` (loss + data source + step kind);
* ``config``   -- ``TrainConfig`` and its sections (pydantic, YAML + dotted overrides);
* ``models``   -- adapters for SD1.5 and SDXL (bundles register theirs, e.g. a pixel-space model);
* ``data``     -- training items from ``samples.parquet`` / a candidates table, batching, resume position;
* ``steps``    -- the fused (instruction, image) forward and the ReFL step;
* ``trainer``  -- ``Trainer`` (setup / train / save / cleanup on accelerate) and ``run_training``;
* ``rewards``  -- differentiable rewards for ReFL;
* ``tiny``     -- tiny random models and datasets for tests, the CPU demo and benchmarks;
* ``cli``      -- the ``typer`` app ``app``.
"""
