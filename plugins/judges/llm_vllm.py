"""LLMJudge's ``vllm`` backend: the vLLM offline engine in a child process (:mod:`nsa.vllm_worker`).

Placed and sized by ``engine``; the same prompt ids as ``hf``, every answer of a shard in
one ``generate`` call, structured output through vLLM's JSON-schema decoding. ``close()``
ends the process when the stage is done.
"""

from __future__ import annotations

from typing import Any

from nsa.plugins.judges.llm_hf import encode
from nsa.plugins.judges.remote import Count, Failed
from nsa.plugins.judges.verdicts import schema
from nsa.vllm_worker import VLLMEngine, VLLMWorker


class VLLMGenerate:
    def __init__(
        self, model: str, dtype: str, engine: VLLMEngine, max_tokens: int, temperature: float, structured: bool
    ) -> None:
        self.model = model
        self.dtype = dtype
        self.engine = engine
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.structured = structured
        self.worker: VLLMWorker | None = None
        self.tokenizer: Any = None

    def start(self) -> VLLMWorker:
        if self.worker is None:
            from nsa.models import load_tokenizer, resolve_policy

            folder = resolve_policy(self.model)
            self.tokenizer = load_tokenizer(folder)
            # JSON without free whitespace: a weak model would otherwise fill max_tokens with it
            options = {
                "dtype": self.dtype,
                "structured_outputs_config": {"backend": "xgrammar", "disable_any_whitespace": True},
            }
            self.worker = VLLMWorker("LLMJudge", folder, options, self.engine)
            self.worker.start()
        return self.worker

    def close(self) -> None:
        if self.worker is not None:
            self.worker.close()
        self.worker = self.tokenizer = None

    def replies(self, requests: list[tuple[str, int]], count: Count) -> list[str | Failed]:
        worker = self.start()
        count("requests", len(requests))
        ids = [encode(self.tokenizer, prompt)["input_ids"][0].tolist() for prompt, _ in requests]
        # vLLM refuses a prompt beyond the model's context: that one answer fails, not the shard
        fits = [k for k, prompt_ids in enumerate(ids) if len(prompt_ids) < worker.max_model_len]
        replies: list[str | Failed] = [Failed(False, "prompt longer than the model's context")] * len(ids)
        count("failed", len(ids) - len(fits))
        if fits:
            sampling = [self.sampling(requests[k][1]) for k in fits]
            for k, (text, finish, _) in zip(fits, worker.generate([ids[k] for k in fits], sampling), strict=True):
                replies[k] = "" if finish == "length" else text  # cut off: not an answer, as elsewhere
        return replies

    def sampling(self, num_steps: int) -> dict[str, Any]:
        sampling: dict[str, Any] = {"max_tokens": self.max_tokens, "temperature": self.temperature}
        if self.structured:
            sampling["json_schema"] = schema(num_steps)
        return sampling
