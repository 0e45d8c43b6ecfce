"""The word-level tokenizer of ShapesWorld, built offline from the caption grammar's vocabulary."""

from __future__ import annotations

from instructengine.shapes.scene import BACKGROUNDS, COLOURS, COUNT_WORDS, PALETTES, SHAPES, SIZES

PAD, UNK, BOS, EOS = "[PAD]", "[UNK]", "[BOS]", "[EOS]"
MAX_LENGTH = 24  # longest caption is 18 words + BOS/EOS


def vocabulary() -> list[str]:
    words = [PAD, UNK, BOS, EOS, ",", "broken", "of", "left", "right", "above", "below", "background", "one"]
    words += list(COUNT_WORDS.values()) + list(SIZES) + list(COLOURS)
    words += [s for shape in SHAPES for s in (shape, shape + "s")]
    words += list(PALETTES) + list(BACKGROUNDS)
    seen: dict[str, None] = {}
    for w in words:
        seen.setdefault(w, None)
    return list(seen)


def build_tokenizer():
    """A ``PreTrainedTokenizerFast``: whitespace split, BOS/EOS added, padded to MAX_LENGTH.

    Unknown words map to ``[UNK]`` (so any string can be encoded, e.g. the empty prompt used for
    classifier-free guidance).
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(vocabulary())}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}", special_tokens=[(BOS, vocab[BOS]), (EOS, vocab[EOS])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK,
        model_max_length=MAX_LENGTH, padding_side="right",
    )
