"""LLMJudge's ``hf`` backend: transformers ``generate`` on a local model, for small judges and tests.

``model`` is a local folder (or ``pkg:`` spec), decoded greedily at temperature 0 with its
chat template when it has one. Free-form: ``generate`` has no JSON-schema decoding, so the
tolerant parser reads whatever comes back.
"""

from __future__ import annotations

from typing import Any

from nsa.plugins.judges.remote import Count


def encode(tokenizer: Any, prompt: str) -> Any:
    """The prompt as the model was trained to see a user turn: its chat template, if it has one."""
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": prompt}]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return tokenizer(text, return_tensors="pt", add_special_tokens=False)
    return tokenizer(prompt, return_tensors="pt")


class HFGenerate:
    def __init__(self, model: str, max_tokens: int, temperature: float) -> None:
        self.model = model
        self.max_tokens = max_tokens
        self.temperature = temperature
        self._loaded: tuple[Any, Any] | None = None

    def load(self) -> tuple[Any, Any]:
        if self._loaded is None:
            from nsa.models import load_policy, load_tokenizer, local_device, resolve_policy

            folder = resolve_policy(self.model)
            self._loaded = (load_policy(folder).to(local_device()).eval(), load_tokenizer(folder))
        return self._loaded

    def close(self) -> None:
        self._loaded = None

    def replies(self, requests: list[tuple[str, int]], count: Count) -> list[str]:
        import torch

        model, tokenizer = self.load()
        # temperature 0 means greedy; generate() rejects temperature=0 with do_sample
        greedy = self.temperature <= 0
        sampling = {"do_sample": False} if greedy else {"do_sample": True, "temperature": self.temperature}
        replies = []
        for prompt, _ in requests:
            count("requests", 1)
            ids = encode(tokenizer, prompt).to(model.device)
            with torch.no_grad():
                generated = model.generate(
                    **ids, max_new_tokens=self.max_tokens, pad_token_id=tokenizer.pad_token_id, **sampling
                )
            new = generated[0, ids["input_ids"].shape[1] :]
            cut_off = len(new) >= self.max_tokens and int(new[-1]) != tokenizer.eos_token_id
            # a reply cut off at max_tokens is not an answer (like finish_reason "length")
            replies.append("" if cut_off else tokenizer.decode(new, skip_special_tokens=True))
        return replies
