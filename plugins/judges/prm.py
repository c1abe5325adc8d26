"""A discriminative process reward model (PRM) as a step judge: one forward per answer.

The steps of an answer (``item.response[start:end]`` for each span, stripped of surrounding
whitespace, as the PRMs were trained on bare steps) are laid out after the question, each
followed by the step marker, and every step is scored in the same forward pass at its
marker's position. Three conventions, each one's facts held once in ``CONVENTIONS``:

``qwen-prm`` (Qwen2.5-Math-PRM)
    The model's chat template with the system prompt of its model card, the question as
    the user turn and ``<extra_0>``-joined steps (a marker after the last one too) as the
    assistant turn. Score = softmax(logits)[..., 1] at each marker. Without a chat
    template the text is ``question + "\\n\\n" + steps``. The real model is remote code:
    with ``trust_remote_code=True`` it is loaded with ``AutoModel`` (which maps to its
    ``Qwen2ForProcessRewardModel``); without it, with ``AutoModelForTokenClassification``
    (a plain ``AutoModel`` would give the base model without the 2-way head).

``math-shepherd``
    A causal LM. Text ``question + " " + step_1 + " " + tag + "\\n" + step_2 + " " + tag ...``
    with the tag ``ки`` (the card's ``"...per day. ки\\nStep 2: ..."``). As in the card, the
    logits AT the tag position (those predicting the token after the tag) give the verdict:
    score = P(positive_token) renormalised over {positive_token, negative_token}.

``token-classification`` (TRL ``PRMTrainer`` models)
    As TRL's ``PRMTrainer.tokenize_row``: the BOS id when the tokenizer has one, the
    question's ids, then each step's ids followed by ``step_marker``'s ids (TRL's
    ``step_separator``, default ``"\\n"`` as in TRL; ``""`` for none); the label is read at the
    last token of each step (separator included). Score = softmax(logits)[..., 1]. A step
    that is empty after stripping, with no separator, has no token and is unjudged (``None``).

Token layout
    ``qwen-prm`` and ``math-shepherd``: the whole text is tokenised at once, as the model
    cards do, and each score is read at the token covering the first character of that
    step's marker (found through the tokenizer's character offsets, never by searching
    decoded text). If that token is not the marker's own (it merged with a neighbour), the
    step is unjudged and counted in ``stats()["unmarked_steps"]``. A marker must be a single
    token: the judge raises :class:`~nsa.errors.NSAError` when the model is first loaded if
    it is not. ``token-classification``: as TRL's ``PRMTrainer``, the question and each step
    are tokenised apart and their ids concatenated, the separator's ids after each step.

Long answers
    Inputs are cut at ``max_length`` tokens (on vLLM, at most the model's context). The steps
    whose score position still fits are scored (for a causal model their scores are those of
    the full input); the later steps
    are ``None`` (unjudged) and counted in ``stats()["truncated_steps"]`` (cumulative over
    calls; nsa logs it as ``data/judge/PRMJudge/truncated_steps``).

Batching
    Answers are sorted by length and packed greedily so that rows x longest row stays
    within ``tokens_per_batch`` (a longer answer gets a batch of its own). ``threshold`` is
    not used here: nsa applies it to the cached scores.

Backends
    ``hf``: transformers, in this process, batched as above.
    ``vllm``: vLLM's pooling runner in a child process (:mod:`nsa.vllm_worker`), which
    batches by itself; ``engine`` places and sizes it. The same ids go in and the class
    probabilities at the same positions come out. ``token-classification`` and
    ``qwen-prm`` read the model's own 2-way head (vLLM implements Qwen2.5-Math-PRM's
    ``Qwen2ForProcessRewardModel`` itself: no remote code); ``math-shepherd`` turns the causal LM
    into a 2-way classifier over the rows (negative_token, positive_token) of its LM head
    (vLLM's ``classifier_from_token``), whose softmax is P(+) renormalised over {+, -},
    exactly the hf score. ``close()`` ends the child (and frees an hf model) once the stage
    is done.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

from nsa.batching import pack_greedy, pad_right
from nsa.contracts import StepItem
from nsa.errors import NSAError
from nsa.models import local_device, policy_identity
from nsa.vllm_worker import DEFAULT_ENGINE, VLLMEngine, VLLMWorker, available

QWEN_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."
_SENTINEL = "\ue000NSA-STEPS\ue000"  # a private-use string no chat template rewrites


@dataclass(frozen=True)
class Convention:
    """How one family of PRMs was trained: the judge reads these facts and never a convention's name."""

    marker: str  # the default step_marker
    # True: the model card's one string, tokenised whole, each score read at its marker's token.
    # False: TRL's layout, question and steps tokenised apart, each score read at a step's last token.
    whole_text: bool
    # True: a causal LM, score = P(positive_token) renormalised over {positive_token, negative_token}
    # from the logits at the marker. False: a 2-way token-classification head, score = P(class 1).
    causal_lm: bool = False
    after_question: str = ""  # whole text: between the question and the first step
    between_steps: str = ""  # whole text: before each later step
    marker_space: str = ""  # whole text: between a step and its marker
    system_prompt: str | None = None  # set: the model's chat template with this system turn, if the tokenizer has one
    remote_class: str | None = None  # the transformers Auto class of the model's remote code (trust_remote_code)

    def model_class(self, trust_remote_code: bool) -> str:
        """The transformers Auto class the model is loaded with."""
        if trust_remote_code and self.remote_class is not None:
            return self.remote_class
        # a plain AutoModel would give the base model without the 2-way head
        return "AutoModelForCausalLM" if self.causal_lm else "AutoModelForTokenClassification"


CONVENTIONS: dict[str, Convention] = {
    # Qwen2.5-Math-PRM: its chat template and the card's system prompt; without a template, question + "\n\n"
    "qwen-prm": Convention(
        marker="<extra_0>", whole_text=True, after_question="\n\n", system_prompt=QWEN_SYSTEM, remote_class="AutoModel"
    ),
    # Math-Shepherd's card: "question step_1 ки\nstep_2 ки", the tag after a space
    "math-shepherd": Convention(
        marker="ки", whole_text=True, causal_lm=True, after_question=" ", between_steps="\n", marker_space=" "
    ),
    # TRL PRMTrainer: PRMConfig's default step_separator
    "token-classification": Convention(marker="\n", whole_text=False),
}
# The config schema's choices are the table's names (a Literal of a tuple is a Literal of its items).
ConventionName = Literal[tuple(CONVENTIONS)]


class _Encoded(NamedTuple):
    """One answer's input ids and, per step, the index its score is read at (None: unjudged)."""

    ids: list[int]
    positions: list[int | None]


def _judged(encoded: list[_Encoded]) -> list[int]:
    """The answers with a step to score: the others need no forward."""
    return [i for i, e in enumerate(encoded) if any(p is not None for p in e.positions)]


class PRMJudge:
    """Scores every step of an answer with a process reward model, all steps in one forward."""

    def __init__(
        self,
        model: str,
        convention: ConventionName = "qwen-prm",
        threshold: float = 0.5,
        step_marker: str | None = None,
        positive_token: str = "+",
        negative_token: str = "-",
        max_length: int = 4096,
        tokens_per_batch: int = 16384,
        trust_remote_code: bool = False,
        dtype: str = "float32",
        device: str = "auto",
        backend: Literal["hf", "vllm"] = "hf",
        engine: VLLMEngine = DEFAULT_ENGINE,
    ) -> None:
        if convention not in CONVENTIONS:
            raise NSAError(f"PRM judge: unknown convention '{convention}'; use one of: {', '.join(CONVENTIONS)}")
        if backend not in ("hf", "vllm"):
            raise NSAError(f"PRM judge: backend must be 'hf' or 'vllm', got '{backend}'")
        if backend == "vllm" and not available():
            raise NSAError("PRM judge: backend 'vllm' needs vllm installed (pip install vllm); or use backend: hf")
        if max_length < 1 or tokens_per_batch < 1:
            raise NSAError("PRM judge: max_length and tokens_per_batch must be >= 1")
        self.model = model
        # size and mtime of a local folder's files: new weights in the same folder re-score
        self.model_files = policy_identity(model)["files"]
        self.convention = convention  # the public name is in the cache identity; the facts are looked up once here
        self._convention = CONVENTIONS[convention]
        self.threshold = threshold
        self.step_marker = step_marker if step_marker is not None else self._convention.marker
        self.positive_token = positive_token
        self.negative_token = negative_token
        self.max_length = max_length
        # how the work is batched and placed changes no score: kept out of the cache identity
        self._tokens_per_batch = tokens_per_batch
        self.trust_remote_code = trust_remote_code
        self.dtype = dtype
        self.backend = backend  # the kernels differ in the last digits: scores are keyed by backend
        self._engine = engine
        self._device = device
        self._model = None
        self._worker: VLLMWorker | None = None
        self._tokenizer = None
        self._marker_ids: list[int] = []
        self._label_ids: list[int] = []  # math-shepherd: [positive, negative] vocabulary ids
        self._front: list[int] = []  # the BOS id the tokenizer puts before a text, if any
        self._truncated_steps = 0
        self._unmarked_steps = 0

    # ------------------------------------------------------------------------- scoring

    def score(self, items: Sequence[StepItem]) -> list[list[float | None]]:
        results: list[list[float | None]] = [[None] * len(item.spans) for item in items]
        if not any(item.spans for item in items):
            return results  # nothing to judge: do not even load the model
        self._load()
        encoded = [self._truncate(self._encode(item)) for item in items]
        if self._worker is not None:
            todo = _judged(encoded)
            for i, row_scores in zip(todo, self._vllm_scores([encoded[i] for i in todo]), strict=True):
                results[i] = row_scores
            return results
        for rows in self._batches(encoded):
            scores = self._forward([encoded[i] for i in rows])
            for i, row_scores in zip(rows, scores, strict=True):
                results[i] = row_scores
        return results

    @property
    def devices_per_engine(self) -> int:
        """The node's devices one vLLM engine spans (tensor parallelism); hf runs on its process's own."""
        return self._engine.tensor_parallel_size if self.backend == "vllm" else 1

    def stats(self) -> dict[str, int]:
        """Counters since construction: steps cut off by max_length, steps whose marker merged away."""
        return {"truncated_steps": self._truncated_steps, "unmarked_steps": self._unmarked_steps}

    def close(self) -> None:
        """Frees the model (hf) or ends the vLLM process; a later ``score`` loads it again."""
        if self._worker is not None:
            self._worker.close()
        self._model = self._worker = None

    def _vllm_scores(self, rows: list[_Encoded]) -> list[list[float | None]]:
        picked = [[p for p in r.positions if p is not None] for r in rows]
        probs = self._worker.encode([r.ids for r in rows], picked)  # per row: (S_i, C)
        out = []
        for r, row_probs in zip(rows, probs, strict=True):
            if row_probs and len(row_probs[0]) < 2:
                raise NSAError(f"PRM judge: model '{self.model}' has {len(row_probs[0])} label(s); expected 2")
            scores = iter(p[1] for p in row_probs)  # class 1: correct (math-shepherd: the positive token)
            out.append([None if p is None else next(scores) for p in r.positions])
        return out

    def _batches(self, encoded: list[_Encoded]) -> list[list[int]]:
        """Row indices grouped longest first so that rows x longest row <= tokens_per_batch:
        the training batches' greedy packing (padded size), one row per unit."""
        longest_first = sorted(_judged(encoded), key=lambda i: -len(encoded[i].ids))
        lengths = [len(e.ids) for e in encoded]
        return pack_greedy([(i,) for i in longest_first], lengths, self._tokens_per_batch, packed=False)

    def _forward(self, rows: list[_Encoded]) -> list[list[float | None]]:
        import torch

        device = self._model.device
        pad = self._tokenizer.pad_token_id if self._tokenizer.pad_token_id is not None else 0
        ids = pad_right([r.ids for r in rows], pad).to(device)  # (B, T), right-padded: each row's positions hold
        mask = pad_right([[1] * len(r.ids) for r in rows], 0).to(device)  # (B, T)
        flat = [(b, p) for b, r in enumerate(rows) for p in r.positions if p is not None]
        row_index = torch.tensor([b for b, _ in flat], device=device)  # (N,)
        pos_index = torch.tensor([p for _, p in flat], device=device)  # (N,)
        with torch.inference_mode():
            picked = self._picked_logits(ids, mask, row_index, pos_index)  # (N, C) float32
        probs = iter(self._probabilities(picked).tolist())  # N floats in [0, 1], in `flat` order
        return [[None if p is None else next(probs) for p in r.positions] for r in rows]

    def _picked_logits(self, ids, mask, row_index, pos_index):
        """Logits at the scored positions, (N, C) in float32."""
        import torch

        kwargs = {}
        if self._keeps_logits():
            # A causal LM's (B, T, vocab) logits are huge: compute the head only where scores are read.
            keep, pos_index = torch.unique(pos_index, return_inverse=True)  # (K,), (N,)
            kwargs["logits_to_keep"] = keep
        out = self._model(input_ids=ids, attention_mask=mask, **kwargs)
        logits = out.logits if hasattr(out, "logits") else out[0]  # (B, T or K, C)
        return logits[row_index, pos_index].float()  # (N, C)

    def _keeps_logits(self) -> bool:
        if not self._convention.causal_lm:
            return False
        return "logits_to_keep" in inspect.signature(self._model.forward).parameters

    def _probabilities(self, picked):
        """(N, C) logits -> (N,) probability that the step is correct."""
        if self._convention.causal_lm:
            return picked[:, self._label_ids].softmax(dim=-1)[:, 0]  # P(+) renormalised over {+, -}
        if picked.shape[-1] < 2:
            raise NSAError(f"PRM judge: model '{self.model}' has {picked.shape[-1]} label(s); expected 2")
        return picked.softmax(dim=-1)[:, 1]

    # ------------------------------------------------------------------------ encoding

    def _encode(self, item: StepItem) -> _Encoded:
        steps = [item.response[start:end].strip() for start, end in item.spans]
        if not steps:
            return _Encoded([], [])
        if self._convention.whole_text:
            return self._encode_text(item.question, steps)
        return self._encode_pieces(item.question, steps)

    def _encode_pieces(self, question: str, steps: list[str]) -> _Encoded:
        """TRL's layout: BOS if the tokenizer has one, the prompt's ids, then each step's ids and
        the separator's, all tokenised apart."""
        bos = self._tokenizer.bos_token_id
        ids, positions = ([] if bos is None else [bos]) + self._tokens(question), []
        for step in steps:
            ids += self._tokens(step) + self._marker_ids
            positions.append(len(ids) - 1 if ids and (self._marker_ids or step) else None)
        return _Encoded(ids, positions)

    def _encode_text(self, question: str, steps: list[str]) -> _Encoded:
        """The model card's layout: one string, tokenised whole (a SentencePiece tokenizer
        gives a piece tokenised alone a word-start mark the whole string does not have). Each
        score is read at the token covering the first character of the inserted marker; a
        marker merged into another token leaves its step unjudged (counted)."""
        head, joiner, tail = self._frame(question)
        text, marks = head, []
        for k, step in enumerate(steps):
            text += (joiner if k else "") + step + self._convention.marker_space
            marks.append(len(text))  # the marker's first character
            text += self.step_marker
        encoding = self._tokenizer(text + tail, add_special_tokens=False, return_offsets_mapping=True)
        ids, cover = encoding["input_ids"], {}
        for i, (start, end) in enumerate(encoding["offset_mapping"]):
            for char in range(start, end):
                cover.setdefault(char, i)
        positions = [cover.get(mark) for mark in marks]
        positions = [p if p is not None and ids[p] == self._marker_ids[0] else None for p in positions]
        self._unmarked_steps += positions.count(None)
        front = self._front if self._front and ids[:1] != self._front else []
        return _Encoded(front + ids, [None if p is None else p + len(front) for p in positions])

    def _frame(self, question: str) -> tuple[str, str, str]:
        """(text before the first step, text before each later step, text after the last marker)."""
        convention = self._convention
        if convention.system_prompt is not None and getattr(self._tokenizer, "chat_template", None):
            chat = self._chat_frame(question, convention.system_prompt)
            if chat is not None:
                return chat
        return question + convention.after_question, convention.between_steps, ""

    def _chat_frame(self, question: str, system: str) -> tuple[str, str, str] | None:
        """The chat template around the steps, the question as the user turn; None if the
        template does not keep the assistant turn as written (the plain text is used then)."""
        messages = [
            {"role": "system", "content": system},
            {"role": "user", "content": question},
            {"role": "assistant", "content": _SENTINEL},
        ]
        text = self._tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
        if isinstance(text, str) and text.count(_SENTINEL) == 1:
            head, tail = text.split(_SENTINEL)
            return head, "", tail
        return None

    def _tokens(self, text: str) -> list[int]:
        return self._tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    def _truncate(self, enc: _Encoded) -> _Encoded:
        # vLLM refuses inputs longer than the model's context; transformers would run past it
        limit = min(self.max_length, self._worker.max_model_len) if self._worker else self.max_length
        if len(enc.ids) <= limit:
            return enc
        kept = [p if p is not None and p < limit else None for p in enc.positions]
        self._truncated_steps += sum(p is not None for p in enc.positions) - sum(p is not None for p in kept)
        return _Encoded(enc.ids[:limit], kept)

    # ------------------------------------------------------------------------- loading

    def _load(self) -> None:
        if self._model is not None or self._worker is not None:
            return
        from nsa.models import load_tokenizer, resolve_policy

        folder = resolve_policy(self.model)
        tokenizer = load_tokenizer(folder)
        self._tokenizer = tokenizer
        bos = tokenizer.bos_token_id
        self._front = [bos] if bos is not None and bos in tokenizer("", add_special_tokens=True)["input_ids"] else []
        # Check the tokens before the (slow) model load so a wrong marker fails at once.
        if self._convention.whole_text:
            self._single_token(self.step_marker, "step marker", "step_marker")  # one token, or a clear error
            self._marker_ids = [self._marker_in_context()]
        else:
            self._marker_ids = self._marker_separator() if self.step_marker else []
        if self._convention.causal_lm:
            self._label_ids = [
                self._single_token(self.positive_token, "positive token", "positive_token"),
                self._single_token(self.negative_token, "negative token", "negative_token"),
            ]
        if self.backend == "vllm":
            self._worker = self._vllm_worker(folder)
            self._worker.start()  # its context, which bounds max_length, is known once it runs
        else:
            self._model = self._load_model(folder)

    def _vllm_worker(self, folder: str) -> VLLMWorker:
        """The vLLM pooling engine for this convention; its process starts on the first score."""
        options = {
            "runner": "pooling",
            "token_scores": True,
            "dtype": self.dtype,
            "trust_remote_code": self.trust_remote_code,
        }
        if self._convention.causal_lm:
            labels = self._tokenizer.convert_ids_to_tokens(self._label_ids[::-1])  # [negative, positive]
            options["convert"] = "classify"
            options["hf_overrides"] = {"classifier_from_token": labels, "method": "no_post_processing"}
        return VLLMWorker("PRM judge", folder, options, self._engine)

    def _marker_in_context(self) -> int:
        """The id of the one token the marker becomes inside a text (after a space for
        Math-Shepherd: a SentencePiece tokenizer's word-start form, as the card's
        ``tokenizer.encode("ки")[-1]``). An error when it merges with its neighbours there."""
        if not getattr(self._tokenizer, "is_fast", False):
            raise NSAError(f"PRM judge: model '{self.model}' needs a fast tokenizer (tokenizer.json) to locate markers")
        head = "1." + self._convention.marker_space
        text = head + self.step_marker + "\n2."
        encoding = self._tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        end = len(head) + len(self.step_marker)
        for i, (start, stop) in enumerate(encoding["offset_mapping"]):
            if start <= len(head) < stop:
                if start >= len("1.") and stop == end:  # the marker (and its space), nothing else
                    return encoding["input_ids"][i]
                break
        raise NSAError(
            f"PRM judge: in model '{self.model}''s tokenizer the step marker {self.step_marker!r} merges with the "
            f"text around it, so no score position exists; set step_marker to the model's own step token"
        )

    def _marker_separator(self) -> list[int]:
        # TRL allows a multi-token step separator and labels its last token.
        ids = self._tokenizer(self.step_marker, add_special_tokens=False)["input_ids"]
        if not ids:
            raise NSAError(f"PRM judge: step_marker {self.step_marker!r} tokenises to nothing for '{self.model}'")
        return ids

    def _single_token(self, text: str, what: str, option: str) -> int:
        """The one vocabulary id of ``text``, or a one-line error saying how to fix it."""
        tokenizer = self._tokenizer
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) == 1 and ids[0] != tokenizer.unk_token_id:
            return ids[0]
        vocab_id = tokenizer.convert_tokens_to_ids(text)  # e.g. a tag a SentencePiece splits off a word-start mark
        if isinstance(vocab_id, int) and vocab_id != tokenizer.unk_token_id:
            return vocab_id
        raise NSAError(
            f"PRM judge: the tokenizer of model '{self.model}' has no single token for the {what} {text!r} "
            f"(it tokenises to {len(ids)} tokens); set the judge's {option} option to the token this "
            f"'{self.convention}' model was trained with"
        )

    def _load_model(self, folder: str):
        import torch
        import transformers

        auto_class = self._convention.model_class(self.trust_remote_code)
        auto = getattr(transformers, auto_class)
        try:
            model, info = auto.from_pretrained(
                folder,
                trust_remote_code=self.trust_remote_code,
                dtype=getattr(torch, self.dtype),
                output_loading_info=True,
            )
        except (OSError, ValueError) as err:
            raise NSAError(f"PRM judge: model '{self.model}' could not be loaded: {str(err).splitlines()[0]}") from None
        if info.get("missing_keys"):
            # a head transformers initialised at random would score noise, silently
            raise NSAError(
                f"PRM judge: model '{self.model}' has no weights for {sorted(info['missing_keys'])[:3]} under "
                f"{auto_class}; Qwen2.5-Math-PRM needs trust_remote_code: true"
            )
        device = local_device() if self._device == "auto" else self._device
        return model.to(device).eval()
