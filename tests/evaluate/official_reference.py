"""Independent transcriptions of the official preprocessing and tokenisation, for the tests.

Each function follows one official code path step by step, in its own order and arithmetic, with
the library calls those paths make (torchvision's and transformers' code is transcribed where it
cannot be imported here: there is no torchvision in this environment):

* :func:`clip_transform` — OpenAI CLIP's ``_transform(n_px)`` (``clip/clip.py``), copied verbatim
  by ImageReward (``ImageReward.py``, ``models/BLIPScore.py``) and used by ``clip.load`` for the
  CLIP score and the aesthetic predictor: torchvision ``Resize(n_px, BICUBIC)`` on the PIL image,
  ``CenterCrop(n_px)``, convert RGB, ``ToTensor``, ``Normalize``.
* :func:`hf_clip_image_processor` — transformers' ``CLIPImageProcessor`` (slow, PIL) as
  ``AutoProcessor`` / ``CLIPProcessor`` from ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K`` runs it for
  PickScore and ICT/HP: resize ``shortest_edge`` (PIL bicubic), ``center_crop`` (floor), rescale
  in float64, normalise.
* :func:`hpsv2_val_transform` — HPSv2's ``image_transform(224, is_train=False,
  resize_longest_max=True)`` (``hpsv2/src/open_clip/transform.py``): convert RGB, ``ToTensor``,
  ``ResizeMaxSize`` on the tensor (torchvision tensor ``resize`` -> ``interpolate``; tensor ``pad``),
  ``Normalize``.
* :func:`simple_tokenize` — open_clip / OpenAI ``SimpleTokenizer.encode`` + ``tokenize`` over a
  given vocabulary and merge list (``basic_clean``, ``whitespace_clean``, lower, regex split,
  byte encoding, BPE, SOT/EOT, zero padding, truncation keeping EOT).
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import ftfy
import numpy as np
import regex
import torch
from PIL import Image

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


# ------------------------------------------------------------------------------- torchvision pieces


def _tv_to_tensor(pic: Image.Image) -> torch.Tensor:
    """torchvision.transforms.functional.to_tensor for an RGB PIL image."""
    img = torch.from_numpy(np.array(pic, np.uint8, copy=True))
    img = img.view(pic.size[1], pic.size[0], 3).permute((2, 0, 1)).contiguous()
    return img.to(dtype=torch.get_default_dtype()).div(255)


def _tv_normalize(tensor: torch.Tensor, mean=MEAN, std=STD) -> torch.Tensor:
    """torchvision.transforms.functional.normalize (tensor.sub_(mean).div_(std))."""
    mean_t = torch.as_tensor(mean, dtype=tensor.dtype).view(-1, 1, 1)
    std_t = torch.as_tensor(std, dtype=tensor.dtype).view(-1, 1, 1)
    return tensor.clone().sub_(mean_t).div_(std_t)


def _tv_resize_pil_shorter(img: Image.Image, size: int) -> Image.Image:
    """torchvision Resize(int, BICUBIC) on PIL: _compute_resized_output_size, then PIL resize."""
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    return img.resize((new_w, new_h), Image.BICUBIC)


def _tv_center_crop_pil(img: Image.Image, size: int) -> Image.Image:
    """torchvision center_crop on PIL: crop_top = int(round((h - th) / 2.0)) (no padding needed here)."""
    w, h = img.size
    top = int(round((h - size) / 2.0))
    left = int(round((w - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


def clip_transform(img: Image.Image, n_px: int) -> torch.Tensor:
    """OpenAI CLIP / ImageReward ``_transform(n_px)``."""
    img = _tv_resize_pil_shorter(img, n_px)
    img = _tv_center_crop_pil(img, n_px)
    img = img.convert("RGB")
    return _tv_normalize(_tv_to_tensor(img))


# ------------------------------------------------------------------------------- transformers CLIPImageProcessor


def hf_clip_image_processor(img: Image.Image, size: int) -> torch.Tensor:
    """CLIPImageProcessor(do_resize, shortest_edge=size, bicubic; do_center_crop size; rescale 1/255; normalise)."""
    arr = np.array(img.convert("RGB"))  # convert_rgb + to_numpy_array (HWC uint8)
    h, w = arr.shape[:2]
    short, long = (w, h) if w <= h else (h, w)  # get_resize_output_image_size(default_to_square=False)
    new_short, new_long = size, int(size * long / short)
    out_h, out_w = (new_long, new_short) if w <= h else (new_short, new_long)
    pil = Image.fromarray(arr)  # image_transforms.resize: to_pil_image (uint8: no rescale), PIL resize, back
    arr = np.array(pil.resize((out_w, out_h), resample=Image.BICUBIC, reducing_gap=None))
    top = (out_h - size) // 2  # image_transforms.center_crop
    left = (out_w - size) // 2
    arr = arr[top:top + size, left:left + size]
    arr = (arr.astype(np.float64) * (1 / 255)).astype(np.float32)  # rescale
    arr = (arr - np.array(MEAN, dtype=arr.dtype)) / np.array(STD, dtype=arr.dtype)  # normalize
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)).astype(np.float32))


# ------------------------------------------------------------------------------- HPSv2 image_transform


def _tv_resize_tensor(img: torch.Tensor, size: list[int], antialias: bool) -> torch.Tensor:
    """torchvision _functional_tensor.resize(img, size, 'bicubic', antialias) for a float32 CHW image."""
    img = img.unsqueeze(dim=0)  # _cast_squeeze_in: float32 needs no cast
    img = torch.nn.functional.interpolate(img, size=size, mode="bicubic", align_corners=False, antialias=antialias)
    return img.squeeze(dim=0)  # no clamp: only uint8 outputs are clamped


def _tv_pad_tensor(img: torch.Tensor, padding: list[int], fill: float) -> torch.Tensor:
    """torchvision _functional_tensor.pad, constant mode: padding [left, top, right, bottom]."""
    pad_left, pad_top, pad_right, pad_bottom = padding
    return torch.nn.functional.pad(img, [pad_left, pad_right, pad_top, pad_bottom], mode="constant", value=float(fill))


def _resize_max_size(img: torch.Tensor, max_size: int, antialias: bool, fill: float = 0) -> torch.Tensor:
    """HPSv2 open_clip ResizeMaxSize.forward for a tensor."""
    height, width = img.shape[1:]
    scale = max_size / float(max(height, width))
    if scale != 1.0:
        new_size = tuple(round(dim * scale) for dim in (height, width))
        img = _tv_resize_tensor(img, list(new_size), antialias)
        pad_h = max_size - new_size[0]
        pad_w = max_size - new_size[1]
        img = _tv_pad_tensor(img, [pad_w // 2, pad_h // 2, pad_w - pad_w // 2, pad_h - pad_h // 2], fill)
    return img


def hpsv2_val_transform(img: Image.Image, image_size: int, antialias: bool = True) -> torch.Tensor:
    """HPSv2 preprocess_val: _convert_to_rgb_or_rgba, ToTensor, ResizeMaxSize, MaskAwareNormalize (3 channels)."""
    img = img if img.mode == "RGBA" else img.convert("RGB")
    x = _tv_to_tensor(img)
    x = _resize_max_size(x, image_size, antialias)
    return _tv_normalize(x)


# ------------------------------------------------------------------------------- SimpleTokenizer


def _basic_clean(text: str) -> str:
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text))
    return text.strip()


def _whitespace_clean(text: str) -> str:
    text = regex.sub(r"\s+", " ", text)
    return text.strip()


def _bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(2 ** 8):
        if b not in bs:
            bs.append(b)
            cs.append(2 ** 8 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def _get_pairs(word):
    pairs = set()
    prev = word[0]
    for ch in word[1:]:
        pairs.add((prev, ch))
        prev = ch
    return pairs


class SimpleTokenizer:
    """OpenAI / open_clip SimpleTokenizer over ``vocab.json`` + ``merges.txt`` of a tokenizer folder."""

    def __init__(self, folder: Path):
        self.byte_encoder = _bytes_to_unicode()
        self.encoder = json.loads((Path(folder) / "vocab.json").read_text())
        lines = (Path(folder) / "merges.txt").read_text().split("\n")[1:]
        merges = [tuple(m.split()) for m in lines if m]
        self.bpe_ranks = dict(zip(merges, range(len(merges))))
        self.cache = {"<|startoftext|>": "<|startoftext|>", "<|endoftext|>": "<|endoftext|>"}
        self.pat = regex.compile(
            r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
            regex.IGNORECASE,
        )

    def bpe(self, token: str) -> str:
        if token in self.cache:
            return self.cache[token]
        word = tuple(token[:-1]) + (token[-1] + "</w>",)
        pairs = _get_pairs(word)
        if not pairs:
            return token + "</w>"
        while True:
            bigram = min(pairs, key=lambda pair: self.bpe_ranks.get(pair, float("inf")))
            if bigram not in self.bpe_ranks:
                break
            first, second = bigram
            new_word = []
            i = 0
            while i < len(word):
                try:
                    j = word.index(first, i)
                    new_word.extend(word[i:j])
                    i = j
                except ValueError:
                    new_word.extend(word[i:])
                    break
                if word[i] == first and i < len(word) - 1 and word[i + 1] == second:
                    new_word.append(first + second)
                    i += 2
                else:
                    new_word.append(word[i])
                    i += 1
            word = tuple(new_word)
            if len(word) == 1:
                break
            pairs = _get_pairs(word)
        out = " ".join(word)
        self.cache[token] = out
        return out

    def encode(self, text: str) -> list[int]:
        bpe_tokens = []
        text = _whitespace_clean(_basic_clean(text)).lower()
        for token in regex.findall(self.pat, text):
            token = "".join(self.byte_encoder[b] for b in token.encode("utf-8"))
            bpe_tokens.extend(self.encoder[t] for t in self.bpe(token).split(" "))
        return bpe_tokens

    def tokenize(self, texts: list[str], context_length: int) -> torch.Tensor:
        sot, eot = self.encoder["<|startoftext|>"], self.encoder["<|endoftext|>"]
        all_tokens = [[sot] + self.encode(t) + [eot] for t in texts]
        result = torch.zeros(len(all_tokens), context_length, dtype=torch.long)
        for i, tokens in enumerate(all_tokens):
            if len(tokens) > context_length:
                tokens = tokens[:context_length]
                tokens[-1] = eot
            result[i, : len(tokens)] = torch.tensor(tokens)
        return result
