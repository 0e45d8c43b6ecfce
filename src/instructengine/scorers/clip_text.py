"""Prompt cleaning of OpenAI CLIP's and open_clip's ``SimpleTokenizer``, in front of a transformers tokenizer.

OpenAI CLIP (``clip/simple_tokenizer.py``) and open_clip (``open_clip/tokenizer.py``, also HPSv2's
fork) clean every prompt before byte-pair encoding it::

    basic_clean(text)      = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    whitespace_clean(text) = re.sub(r"\\s+", " ", text).strip()
    encode(text)           = bpe(whitespace_clean(basic_clean(text)).lower())

transformers' CLIP tokenizer (the ``tokenizers`` backend, the only one in transformers 5, and the
fast one that ``AutoProcessor`` picks in transformers 4) lowercases and collapses whitespace but
runs neither ftfy nor ``html.unescape``: "plate &amp; a spoon" then tokenises ``&amp;`` as four
pieces instead of ``&``. The scorers whose official code tokenises with ``SimpleTokenizer`` (CLIP
score, HPSv2, ICT) pass their prompts through :func:`clean_clip_prompt` first; PickScore, whose
official code uses the transformers processor, does not.
"""

from __future__ import annotations

import html

import regex

__all__ = ["clean_clip_prompt"]

# the official code uses the ``regex`` module, whose ``\s`` is Unicode White_Space (``re``'s differs
# on a few control characters)
_WHITESPACE = regex.compile(r"\s+")


def clean_clip_prompt(text: str) -> str:
    """``whitespace_clean(basic_clean(text))`` of CLIP's ``SimpleTokenizer`` (lowercasing is the tokenizer's).

    Raises:
        ImportError: ftfy is not installed (it is a dependency of this package).
    """
    import ftfy

    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return _WHITESPACE.sub(" ", text).strip()
