"""Captions of ShapesBench scenes from their ground truth, and the offline word-level CLIP tokenizer of ``shapes-sd``.

A caption names every shape by colour and kind, left to right, and the background kind:
"a red disc, a blue square and a yellow disc on a gradient background". It states no positions, so that a
drag (which changes the layout) never contradicts the prompt, while a caption edit ("red disc" -> "blue disc")
has a ground-truth result.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from transformers import CLIPTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

from sdedrag.shapes.data import KINDS, PALETTE, Scene, Shape

BACKGROUNDS = ("plain", "gradient")
PLAIN_RANGE = 8
"""A background whose channels vary by at most this many levels is "plain" (else "gradient")."""
WORDS: tuple[str, ...] = ("a", "and", "on", "background", ",", *PALETTE, *KINDS, *BACKGROUNDS)
"""Every word a caption uses; the tokenizer holds each as a single token."""


def background_kind(background: np.ndarray) -> str:
    """ "plain" if no channel varies by more than PLAIN_RANGE levels, else "gradient"."""
    spread = background.reshape(-1, 3).max(axis=0).astype(int) - background.reshape(-1, 3).min(axis=0)
    return "plain" if spread.max() <= PLAIN_RANGE else "gradient"


def describe(shapes: Sequence[Shape], background: str) -> str:
    """The caption of ``shapes`` (ordered left to right) on a ``background`` kind background."""
    names = [f"a {s.colour} {s.kind}" for s in sorted(shapes, key=lambda s: s.centre[0])]
    listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    return f"{listed} on a {background} background"


def caption(scene: Scene) -> str:
    """The ground-truth caption of ``scene``."""
    return describe(scene.shapes, background_kind(scene.background))


def named_shapes(text: str) -> list[tuple[str, str]]:
    """The (colour, kind) pairs a caption names, in order."""
    words = text.replace(",", " ").split()
    return [(c, k) for c, k in zip(words, words[1:], strict=False) if c in PALETTE and k in KINDS]


def _tokenizer(merges: list[tuple[str, str]]) -> CLIPTokenizer:
    byte_symbols = list(bytes_to_unicode().values())
    merged = [a + b for a, b in merges]
    tokens = ["<|startoftext|>", "<|endoftext|>", *byte_symbols, *(s + "</w>" for s in byte_symbols), *merged]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(tokens))}
    return CLIPTokenizer(vocab=vocab, merges=list(merges), model_max_length=77)


def build_tokenizer() -> CLIPTokenizer:
    """A CLIP BPE tokenizer (every byte, plus merges that make each of WORDS one token), built offline.

    Merges are appended greedily, word by word: a merge ranked after all earlier ones never changes how an
    earlier word is split, so every word ends as one token (other text falls back to bytes).
    """
    merges: list[tuple[str, str]] = []
    for word in WORDS:
        while len(pieces := _tokenizer(merges).tokenize(word)) > 1:
            merges.append((pieces[0], pieces[1]))
    return _tokenizer(merges)
