"""A sampler that replays fixed answers: a test stand-in for a policy that can solve problems.

A tiny random model never answers correctly, so it cannot produce the mixed groups that
the method trains on. The HF sampler is tested on its own (tests/plugins/test_hf_sampler.py)
and with the real SmolLM2 in the quickstart test.
"""

from __future__ import annotations

from collections.abc import Sequence

from nsa.contracts import Completion

ANSWERS = [
    "2 + 3 = 5\n\nThe answer is \\boxed{5}.",
    "2 + 3 = 6\n\nThe answer is \\boxed{6}.",
    "2 * 3 = 6\n\n2 + 3 = 5\n\nSo \\boxed{7}",
    "Hmm.\n\nI give up.",
]


class ScriptedSampler:
    """Every prompt gets the same ``answers`` (token ids from the policy's tokenizer, EOS added).

    Their log-probs are 0.0: replayed text was not drawn from any distribution.
    """

    def __init__(self, answers: list[str] = ANSWERS) -> None:
        self.answers = answers
        self.num_samples = len(answers)

    def sample(self, model_dir: str, prompt_ids: Sequence[Sequence[int]]) -> list[list[Completion]]:
        from nsa.models import load_tokenizer

        tokenizer = load_tokenizer(model_dir)
        ids = [tokenizer(a, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for a in self.answers]
        return [[Completion(list(i), [0.0] * len(i)) for i in ids] for _ in prompt_ids]


class SlowScriptedSampler(ScriptedSampler):
    """The scripted answers after ``delay_s`` seconds: a sampling long enough to kill a run inside it."""

    def __init__(self, delay_s: float = 0.0) -> None:
        super().__init__()
        self.delay_s = delay_s

    def sample(self, model_dir: str, prompt_ids: Sequence[Sequence[int]]) -> list[list[Completion]]:
        import time

        time.sleep(self.delay_s)
        return super().sample(model_dir, prompt_ids)
