"""Steps from SaT ("Segment any Text", the wtpsplit library): the segmenter the paper uses.

SaT splits a response into sentences; sentences are then merged into steps:

- a step grows sentence by sentence until it holds at least ``min_chars`` characters;
- with ``keep_paragraphs``, a blank line always ends a step (even a short one);
- with ``max_chars_per_step``, a step ends before the sentence that would take it past the
  limit; that limit wins over ``min_chars``, and a single longer sentence is never cut;
- a last step shorter than ``min_chars`` joins the step before it, unless a blank line or
  the limit separates them.

Spans tile the text exactly. SaT's sentences are not trusted to concatenate back to the
text (it drops newlines and may return empty sentences), so they are mapped back by
counting their non-whitespace characters along the original text; the whitespace after a
sentence belongs to it.

SaT models live only on the Hugging Face hub. Offline, download one (and the XLM-R
tokenizer it uses) on a machine with network and point ``model`` (and ``tokenizer``) at
the folders.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nsa.contracts import Span
from nsa.errors import NSAError
from nsa.models import policy_identity
from nsa.plugins.segmenters.paragraph import BLANK_LINES

DEFAULT_TOKENIZER = "facebookAI/xlm-roberta-base"
TOKENIZER_FILES = ("tokenizer.json", "sentencepiece.bpe.model")


class SaTSegmenter:
    """Split with a SaT model, then merge sentences into steps (policy in the module docstring).

    ``model`` is a hub name under ``segment-any-text/`` (``sat-3l-sm``) or a local folder.
    ``tokenizer`` defaults to the model folder when it holds tokenizer files, else to
    ``facebookAI/xlm-roberta-base`` (SaT's hub repositories ship no tokenizer).
    ``threshold`` None keeps SaT's own default. The model loads on the first ``split``.
    """

    def __init__(
        self,
        model: str = "sat-3l-sm",
        threshold: float | None = None,
        min_chars: int = 40,
        keep_paragraphs: bool = True,
        max_chars_per_step: int | None = None,
        device: str = "cpu",
        tokenizer: str | None = None,
    ) -> None:
        if min_chars < 0:
            raise NSAError(f"SaTSegmenter min_chars must be >= 0, got {min_chars}")
        if max_chars_per_step is not None and max_chars_per_step < 1:
            raise NSAError(f"SaTSegmenter max_chars_per_step must be >= 1 or null, got {max_chars_per_step}")
        self.model = model
        self.model_files = policy_identity(model)["files"]  # new weights in the same folder re-segment
        self.threshold = threshold
        self.min_chars = min_chars
        self.keep_paragraphs = keep_paragraphs
        self.max_chars_per_step = max_chars_per_step
        self._device = device  # where SaT runs changes no boundary: not part of the cache identity
        self.tokenizer = tokenizer
        self._sat: Any = None

    def split(self, text: str) -> list[Span]:
        if not text:
            return []
        if self._sat is None:
            self._sat = load_sat(self.model, self.tokenizer, self._device)
        sentences = self._sat.split(text, threshold=self.threshold)
        return _steps_from_sentences(text, sentences, self.min_chars, self.keep_paragraphs, self.max_chars_per_step)


def load_sat(model: str, tokenizer: str | None, device: str) -> Any:
    """Load SaT, turning a missing model or tokenizer into one NSAError line on how to fetch it."""
    try:
        from wtpsplit import SaT
    except ImportError as error:
        raise NSAError("SaTSegmenter needs wtpsplit: pip install wtpsplit==2.2.2") from error
    tokenizer = tokenizer or (model if _has_tokenizer(model) else DEFAULT_TOKENIZER)
    try:
        sat = SaT(model, tokenizer_name_or_path=tokenizer)
    except (OSError, ValueError) as error:  # transformers reports a missing hub file offline as OSError
        cause = str(error).splitlines()[0] if str(error) else type(error).__name__
        hub_model = model if "/" in model else f"segment-any-text/{model}"
        raise NSAError(
            f"cannot load SaT model {model!r} with tokenizer {tokenizer!r} ({cause}); on a machine with network run "
            f"`hf download {hub_model} --local-dir DIR` and `hf download {DEFAULT_TOKENIZER} config.json "
            f"tokenizer.json sentencepiece.bpe.model --local-dir TOK`, copy both folders here and set model: DIR "
            f"and tokenizer: TOK"
        ) from error
    _accept_old_embedding_kwargs(sat.model.model.roberta.embeddings)
    sat.model.model.to(device)
    return sat


def _has_tokenizer(model: str) -> bool:
    folder = Path(model)
    return folder.is_dir() and any((folder / name).exists() for name in TOKENIZER_FILES)


def _accept_old_embedding_kwargs(embeddings: Any) -> None:
    """wtpsplit 2.2.2 passes ``past_key_values_length`` to XLM-R embeddings; transformers 5 renamed it.

    Patched on this one module instance only, so no other XLM-R model is touched.
    """
    forward = embeddings.forward
    if "past_key_values_length" in inspect.signature(forward).parameters:
        return

    def compatible_forward(*args: Any, past_key_values_length: int = 0, **kwargs: Any) -> Any:
        return forward(*args, cache_length=past_key_values_length, **kwargs)

    embeddings.forward = compatible_forward


def _steps_from_sentences(
    text: str, sentences: Sequence[str], min_chars: int, keep_paragraphs: bool, max_chars: int | None
) -> list[Span]:
    """The spans ``split`` returns, given SaT's sentences for ``text``."""
    if not text:
        return []
    forced = {m.end() for m in BLANK_LINES.finditer(text) if m.end() < len(text)} if keep_paragraphs else set()
    cuts = sorted(set(_sentence_cuts(text, sentences)) | forced)
    return _merge(cuts, len(text), forced, min_chars, max_chars)


def _sentence_cuts(text: str, sentences: Sequence[str]) -> list[int]:
    """Where each sentence ends in ``text``, trailing whitespace included (0 and len(text) left out).

    Counting non-whitespace characters survives SaT dropping or changing whitespace; since
    every cut is a position in ``text``, the spans tile it whatever SaT returned.
    """
    cuts: list[int] = []
    position = 0
    for sentence in sentences[:-1]:  # the last sentence ends at the text's end anyway
        needed = sum(not char.isspace() for char in sentence)
        if not needed:  # SaT returns '' for blank lines
            continue
        while position < len(text) and needed:
            needed -= not text[position].isspace()
            position += 1
        while position < len(text) and text[position].isspace():
            position += 1
        if 0 < position < len(text):
            cuts.append(position)
    return cuts


def _merge(cuts: list[int], end: int, forced: set[int], min_chars: int, max_chars: int | None) -> list[Span]:
    """Group the sentence pieces between ``cuts`` into steps; ``forced`` cuts always end one."""
    spans: list[Span] = []
    start = tentative = 0
    for cut in [*cuts, end]:
        if max_chars is not None and tentative > start and cut - start > max_chars:
            spans.append((start, tentative))  # the next piece would overflow: close the step before it
            start = tentative
        tentative = cut
        if cut < end and (cut in forced or cut - start >= min_chars):
            spans.append((start, cut))
            start = cut
    if start < end:
        spans.append((start, end))
    return _join_short_tail(spans, forced, min_chars, max_chars)


def _join_short_tail(spans: list[Span], forced: set[int], min_chars: int, max_chars: int | None) -> list[Span]:
    """A short last step (an answer line, say) joins the previous step when nothing separates them."""
    if len(spans) < 2:
        return spans
    (first, middle), (_, last) = spans[-2], spans[-1]
    fits = max_chars is None or last - first <= max_chars
    if last - middle < min_chars and middle not in forced and fits:
        return [*spans[:-2], (first, last)]
    return spans
