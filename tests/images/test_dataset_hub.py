"""The dataset folder is a Hugging Face dataset: `datasets.load_dataset(<folder>)` gives the samples,
its card names no machine path, and every file in it is readable by the group."""

import os
import re
import stat
from pathlib import Path

import pandas as pd
import pytest
from images_helpers import copy_text_run, make_config

from instructengine.data.schema import SAMPLE_COLUMNS, load_samples
from instructengine.images.pipeline import run_image_stages


@pytest.fixture(scope="module")
def dataset_folder(shapes_text_run, tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    run = copy_text_run(shapes_text_run, root / "run")
    model_dir = root / "models" / "my-local-sdxl"  # a local model folder: the card may show its name only
    model_dir.mkdir(parents=True)
    cfg = make_config(run, generator={"kind": "shapes_render", "model": str(model_dir)},
                      candidates={"n_candidates": 2, "max_pairs": 24},
                      dataset={"license": "cc-by-4.0", "tags": ["shapesworld"]})
    run_image_stages(cfg, ("candidates", "select", "judge", "dataset"), log=lambda s: None)
    return run / "images", root


def test_load_dataset_gives_the_samples(dataset_folder, tmp_path):
    datasets = pytest.importorskip("datasets")
    folder, _ = dataset_folder
    expected, _ = load_samples(folder)
    assert len(expected) > 5 and len(list(folder.rglob("*.png"))) > len(expected)  # PNGs that must not load as rows
    ds = datasets.load_dataset(str(folder), split="train", cache_dir=str(tmp_path / "hf_cache"))
    got = ds.to_pandas()
    assert list(got.columns) == list(SAMPLE_COLUMNS)
    pd.testing.assert_frame_equal(got, expected.reset_index(drop=True), check_dtype=False)
    assert got["seed_1"].dtype == "int64" and got["score_1"].dtype == "float64"
    want = {"O": "string", "i": "int64", "f": "float64"}
    assert {k: v.dtype for k, v in ds.features.items()} == {c: want[k] for c, (k, _) in SAMPLE_COLUMNS.items()}


def test_card_front_matter_and_no_machine_paths(dataset_folder):
    from huggingface_hub import DatasetCard

    folder, root = dataset_folder
    text = (folder / "README.md").read_text()
    card = DatasetCard.load(folder / "README.md")
    data = card.data.to_dict()
    assert data["configs"] == [{"config_name": "default", "data_files": [{"split": "train", "path": "samples.parquet"}]}]
    assert data["license"] == "cc-by-4.0" and data["task_categories"] == ["text-to-image"]
    assert {"instructengine", "preference", "shapesworld"} <= set(data["tags"])
    n = len(pd.read_parquet(folder / "samples.parquet"))
    assert data["dataset_info"]["splits"] == [{"name": "train", "num_examples": n}]
    funnel = {r["step"]: r for r in data["instructengine_funnel"]}
    assert funnel["kept samples"]["out"] == n and funnel["kept samples"]["in"] == 24
    assert funnel["judge"]["in"] == 48  # 24 pairs x 2 selected images
    # no path of this machine: not the run folder, the model folder, the working directory or home
    for forbidden in (str(root), str(root.resolve()), os.getcwd(), str(Path.home())):
        assert forbidden not in text, forbidden
    assert not re.search(r"(?<![\w.:/])/(tmp|root|home|work|Users)/", text)
    assert "my-local-sdxl" in text  # the local model is still named, by its folder name


def test_dataset_files_are_group_readable(dataset_folder):
    folder, _ = dataset_folder
    umask = os.umask(0)
    os.umask(umask)
    want = 0o666 & ~umask
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert {"samples.parquet", "README.md", "manifest.json", "config.yaml", "hist_theme.png"} <= {p.name for p in files}
    bad = {str(p.relative_to(folder)): oct(stat.S_IMODE(p.stat().st_mode)) for p in files
           if stat.S_IMODE(p.stat().st_mode) != want}
    assert not bad and (want & 0o040 or umask & 0o040)  # group-readable unless the umask itself forbids it
