"""Small files in the published schemas of the paper's data: Pick-a-Pic v2 shards, DiffusionDB
metadata; and tiny ImageReward weights in ImageReward's own layout (built by tests/evaluate/tiny.py)."""

from __future__ import annotations

import datetime as dt
import importlib.util
import io
from pathlib import Path

import numpy as np

COLOURS = {"red": (220, 30, 30), "green": (30, 180, 40), "blue": (30, 60, 220), "yellow": (230, 210, 20)}


def image_bytes(colour: str, fmt: str, size: tuple[int, int] = (24, 20), seed: int = 0) -> bytes:
    """Encoded bytes (JPEG or PNG) of a white image with a coloured rectangle."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = size
    arr = np.full((h, w, 3), 255, np.uint8)
    top, left = int(rng.integers(0, h // 2)), int(rng.integers(0, w // 2))
    arr[top:top + h // 2, left:left + w // 2] = COLOURS[colour]
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


#: (caption, label_0, label_1) of the rows of shard 0 and shard 1; 0.5/0.5 is a tie
PICKAPIC_ROWS = [
    [("a red square", 1.0, 0.0), ("a blue square", 0.0, 1.0), ("a green square", 0.5, 0.5),
     ("a yellow square", 1.0, 0.0), ("a red square", 0.0, 1.0)],
    [("a blue square", 1.0, 0.0), ("a green square", 0.0, 1.0), ("a yellow square", 0.5, 0.5),
     ("a red square", 1.0, 0.0), ("a green square", 1.0, 0.0), ("a blue square", 0.0, 1.0)],
]


def write_pickapic(root: Path, rows: list[list[tuple[str, float, float]]] = PICKAPIC_ROWS,
                   row_group_size: int = 2) -> Path:
    """Pick-a-Pic v2 train shards ``data/train-0000i-of-0000n.parquet`` with its columns; the preferred
    image shows the caption's colour, the other a different one; jpg_0 is JPEG, jpg_1 PNG (both kinds occur)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    (root / "data").mkdir(parents=True, exist_ok=True)
    names = list(COLOURS)
    ranking = 0
    for s, shard in enumerate(rows):
        cols: dict[str, list] = {k: [] for k in (
            "are_different", "best_image_uid", "caption", "created_at", "has_label", "image_0_uid", "image_0_url",
            "image_1_uid", "image_1_url", "jpg_0", "jpg_1", "label_0", "label_1", "model_0", "model_1",
            "ranking_id", "user_id", "num_example_per_prompt")}
        for caption, l0, l1 in shard:
            colour = caption.split()[1]
            other = names[(names.index(colour) + 1) % len(names)]
            c0, c1 = (colour, other) if l0 >= l1 else (other, colour)
            uid0, uid1 = f"u{ranking}a", f"u{ranking}b"
            cols["are_different"].append(True)
            cols["best_image_uid"].append(uid0 if l0 > l1 else uid1 if l1 > l0 else "")
            cols["caption"].append(caption)
            cols["created_at"].append(dt.datetime(2023, 5, 1, 12, ranking % 60))
            cols["has_label"].append(True)
            cols["image_0_uid"].append(uid0)
            cols["image_0_url"].append(f"https://example.invalid/{uid0}.png")
            cols["image_1_uid"].append(uid1)
            cols["image_1_url"].append(f"https://example.invalid/{uid1}.png")
            cols["jpg_0"].append(image_bytes(c0, "JPEG", seed=2 * ranking))
            cols["jpg_1"].append(image_bytes(c1, "PNG", seed=2 * ranking + 1))
            cols["label_0"].append(l0)
            cols["label_1"].append(l1)
            cols["model_0"].append("stabilityai/stable-diffusion-xl-beta-v2-2-2")
            cols["model_1"].append("runwayml/stable-diffusion-v1-5")
            cols["ranking_id"].append(ranking)
            cols["user_id"].append(1000 + ranking % 3)
            cols["num_example_per_prompt"].append(1)
            ranking += 1
        table = pa.table({k: pa.array(v, type=pa.binary()) if k.startswith("jpg_") else v for k, v in cols.items()})
        pq.write_table(table, root / "data" / f"train-{s:05d}-of-{len(rows):05d}.parquet", row_group_size=row_group_size)
    return root


def expected_pickapic_triples(rows=PICKAPIC_ROWS) -> list[tuple[str, int, int, str]]:
    """(caption, shard, row, winner column) of every non-tie row, by hand from the labels."""
    out = []
    for s, shard in enumerate(rows):
        for r, (caption, l0, l1) in enumerate(shard):
            if l0 == l1:
                continue
            out.append((caption, s, r, "jpg_0" if l0 == 1.0 else "jpg_1"))
    return out


DIFFUSIONDB_PROMPTS = ["a red square", "a blue square, digital art", "a red square", "", "a green square on white",
                       "  a yellow square  ", "a blue square, digital art"]


def write_diffusiondb_metadata(root: Path, prompts: list[str] = DIFFUSIONDB_PROMPTS) -> Path:
    """DiffusionDB's metadata.parquet with its columns and dtypes."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root.mkdir(parents=True, exist_ok=True)
    n = len(prompts)
    table = pa.table({
        "image_name": pa.array([f"{i:08x}-0000-0000-0000-000000000000.png" for i in range(n)]),
        "prompt": pa.array(prompts),
        "part_id": pa.array([1 + i // 1000 for i in range(n)], pa.uint16()),
        "seed": pa.array([123456 + i for i in range(n)], pa.uint32()),
        "step": pa.array([50] * n, pa.uint16()),
        "cfg": pa.array([7.0] * n, pa.float32()),
        "sampler": pa.array(["k_lms"] * n),
        "width": pa.array([512] * n, pa.uint16()),
        "height": pa.array([512] * n, pa.uint16()),
        "user_name": pa.array([f"user{i % 2}" for i in range(n)]),
        "timestamp": pa.array([dt.datetime(2022, 8, 20, tzinfo=dt.timezone.utc)] * n, pa.timestamp("us", tz="UTC")),
        "image_nsfw": pa.array([0.1] * n, pa.float32()),
        "prompt_nsfw": pa.array([0.01] * n, pa.float32()),
    })
    path = root / "metadata.parquet"
    pq.write_table(table, path)
    return path


def eval_tiny():
    """tests/evaluate/tiny.py (tiny scorer weights in their original layouts), imported by path."""
    path = Path(__file__).resolve().parent.parent / "evaluate" / "tiny.py"
    spec = importlib.util.spec_from_file_location("evaluate_tiny_models", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_tiny_imagereward(folder: Path, seed: int = 2) -> dict[str, str]:
    """ImageReward.pt (BLIP under ``blip.`` + ``mlp.``, ViT at 32 px), med_config.json and a BERT tokenizer;
    returns the reward_kwargs that load them."""
    import torch

    tiny = eval_tiny()
    folder.mkdir(parents=True, exist_ok=True)
    vocab = tiny.write_bert_tokenizer(folder / "bert")
    tiny.write_med_config(folder / "med_config.json", vocab)
    sd = tiny.blip_state_dict(vocab, seed=seed, prefix="blip.")
    sd.update(tiny.write_reward_mlp(None, input_size=16, seed=seed + 1, prefix="mlp."))
    torch.save(sd, folder / "ImageReward.pt")
    return {"checkpoint": str(folder / "ImageReward.pt"), "med_config": str(folder / "med_config.json"),
            "tokenizer": str(folder / "bert")}
