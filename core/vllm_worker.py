"""A vLLM engine in a child process of its own, for the stages that run on vLLM.

Why a child: the engine's GPU (or CPU KV-cache) memory is freed when the stage ends, before
training starts, and vLLM's in-process changes (it pins torch's thread count and patches
``torch.set_num_threads``) never reach the process that trains. Inside the child the engine
runs in-process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``), so there is one child, not two.

The parent sends plain Python data (token ids, chat messages, numbers) through a pipe and
gets plain data back; nothing of vLLM is imported in the parent.

Placement: in a job of several processes, each process that leads an engine starts its own
child, pinned to its GPUs through ``CUDA_VISIBLE_DEVICES``: the GPU the launcher gave the
process (``torch.cuda.current_device()``) and the next ``tensor_parallel_size - 1`` ones, as
numbered in the parent's own ``CUDA_VISIBLE_DEVICES``, set first thing in the child. The
child drops the job's torch.distributed variables (``RANK``, ``MASTER_PORT``, ...), so the
engine's own process group never meets the job's.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import weakref
from dataclasses import asdict, dataclass
from typing import Any

from nsa.errors import NSAError
from nsa.models import free_accelerator_memory


@dataclass(frozen=True)
class VLLMEngine:
    """How a vLLM engine is placed and sized; none of it changes a score or a reply.

    ``kv_cache_memory_bytes`` None lets vLLM size the cache from ``gpu_memory_utilization``
    (on the CPU build, from ``VLLM_CPU_KVCACHE_SPACE`` GiB, which nsa sets to 1 unless it is set).
    ``enforce_eager`` skips CUDA graphs and compilation: slower steps, faster start.
    """

    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.9
    kv_cache_memory_bytes: int | None = None
    enforce_eager: bool = False


DEFAULT_ENGINE = VLLMEngine()  # frozen: safe as a shared default


class VLLMWorker:
    """One engine, ``LLM(model, **options)``, started lazily in a spawned child; ``close`` ends it.

    ``max_model_len`` is the engine's context, known once it has started.
    """

    def __init__(self, who: str, model: str, options: dict[str, Any], engine: VLLMEngine) -> None:
        self._who = who
        self._model = model
        self._options = {**options, **asdict(engine)}
        self._process = None
        self._conn = None
        self.max_model_len = 0

    def encode(self, prompts: list[list[int]], positions: list[list[int]]) -> list[list[list[float]]]:
        """Per prompt, the pooler's class probabilities at the given token positions."""
        return self._call("encode", prompts, positions)

    def generate(self, prompts: list[list[int]], sampling: list[dict[str, Any]]) -> list[tuple[str, str, list[int]]]:
        """Per prompt (token ids), the first completion's (text, finish reason, token ids).

        ``sampling`` holds, per prompt, ``SamplingParams`` fields plus ``json_schema`` for
        structured output.
        """
        return self._call("generate", prompts, sampling)

    def sample(
        self, prompts: list[list[int]], sampling: list[dict[str, Any]]
    ) -> list[list[tuple[list[int], list[float]]]]:
        """Per prompt (token ids), its ``n`` completions as (token ids, log-prob of each id).

        ``sampling`` holds, per prompt, ``SamplingParams`` fields (``n``, ``seed``, ...). The
        ids come as generated, a stop token included; the log-probs are those the engine
        reports for the sampled ids (``logprobs_mode`` decides before or after temperature).
        """
        return self._call("sample", prompts, sampling)

    def start(self) -> None:
        """Starts the engine now (it also starts on the first call)."""
        if self._process is not None:
            return
        free_accelerator_memory()  # vLLM sizes its cache from the memory free when it starts
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        # not a daemon: tensor-parallel engines start worker processes of their own
        devices = engine_devices(self._options["tensor_parallel_size"])
        self._process = context.Process(target=_serve, args=(child, self._model, self._options, devices))
        try:
            self._process.start()
        except BaseException:
            self._conn.close()
            self._process = self._conn = None  # a later call starts afresh instead of reading a dead pipe
            raise
        finally:
            child.close()  # only the child holds its end now: its death reads as EOF here
        self._finalizer = weakref.finalize(self, _kill, self._process)
        status, value = self._receive()
        if status == "error":
            self.close()
            raise NSAError(f"{self._who}: vLLM could not start model '{self._model}': {value}")
        self.max_model_len = value

    def close(self) -> None:
        if self._process is None:
            return
        try:
            self._conn.send(("stop", ()))
        except OSError:
            pass  # the child is already gone
        _kill(self._process, grace_s=30)
        self._conn.close()
        self._process = self._conn = None

    def _call(self, op: str, *args: Any) -> Any:
        self.start()
        try:
            self._conn.send((op, args))
            status, value = self._receive()
        except BaseException:
            # interrupted between request and reply: the reply would answer the next call
            _kill(self._process)
            self._process = self._conn = None
            raise
        if status == "error":
            raise NSAError(f"{self._who}: vLLM failed on model '{self._model}': {value}")
        return value

    def _receive(self) -> tuple[str, Any]:
        try:
            return self._conn.recv()
        except (EOFError, OSError):
            code = _kill(self._process)
            self._process = self._conn = None
            if code == 1:
                hint = "; a script that starts it needs an `if __name__ == '__main__':` guard"
            else:
                hint = "; out of memory? lower kv_cache_memory_bytes or gpu_memory_utilization"
            raise NSAError(
                f"{self._who}: the vLLM process for model '{self._model}' died (exit code {code}){hint}"
            ) from None


def _kill(process: Any, grace_s: float = 5.0) -> int | None:
    """Waits ``grace_s`` for ``process`` to end, then kills it; its exit code."""
    if process is None or process.pid is None:
        return None
    process.join(timeout=grace_s)
    if process.is_alive():
        process.kill()
        process.join()
    return process.exitcode


# torch.distributed's variables of the job that started this process: a child that kept them
# would have vLLM's own process group rendezvous with the job's.
JOB_VARIABLES = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "GROUP_WORLD_SIZE",
    "ROLE_RANK",
    "ROLE_WORLD_SIZE",
    "NODE_RANK",
    "MASTER_ADDR",
    "MASTER_PORT",
    "TORCHELASTIC_RUN_ID",
)


def engine_devices(size: int) -> str | None:
    """``CUDA_VISIBLE_DEVICES`` for this process's engine: ``size`` GPUs from its own; None on
    a CPU (or before torch is loaded), where the child keeps the parent's view."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return None
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = visible.split(",") if visible else [str(i) for i in range(torch.cuda.device_count())]
    first = torch.cuda.current_device()
    chosen = ids[first : first + size]
    if len(chosen) < size:
        raise NSAError(
            f"an engine of tensor_parallel_size {size} on GPU {first} needs GPUs {first}..{first + size - 1}, "
            f"and this process sees {len(ids)}; lower engine.tensor_parallel_size"
        )
    return ",".join(chosen)


def available() -> bool:
    """Whether vllm is installed, without importing it."""
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


# ------------------------------------------------------------------------------ child


def _serve(conn: Any, model: str, options: dict[str, Any], devices: str | None = None) -> None:
    for name in JOB_VARIABLES:  # before vLLM reads them: its process group is its own
        os.environ.pop(name, None)
    if devices is not None:  # before anything initialises CUDA here
        os.environ["CUDA_VISIBLE_DEVICES"] = devices
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # this process is the engine's own already
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    try:
        llm = _engine(model, options)
    except Exception as err:  # any start failure goes back as one line
        conn.send(("error", _one_line(err)))
        return
    conn.send(("ok", llm.llm_engine.model_config.max_model_len))
    ops = {"encode": _encode, "generate": _generate, "sample": _sample}
    while True:
        op, args = conn.recv()
        if op == "stop":
            return
        try:
            conn.send(("ok", ops[op](llm, *args)))
        except Exception as err:  # the parent decides; the engine stays up
            conn.send(("error", _one_line(err)))


def _engine(model: str, options: dict[str, Any]) -> Any:
    from vllm import LLM

    options = dict(options)
    if options.pop("token_scores", False):
        from vllm.config import PoolerConfig

        # every token's class probabilities; Qwen2ForProcessRewardModel's own default (STEP)
        # would keep only the marker rows, and a converted causal LM's would keep the last
        options["pooler_config"] = PoolerConfig(task="token_classify", tok_pooling_type="ALL")
    return LLM(model, **options)


def _encode(llm: Any, prompts: list[list[int]], positions: list[list[int]]) -> list[list[list[float]]]:
    from vllm.inputs import TokensPrompt

    outputs = llm.encode(
        [TokensPrompt(prompt_token_ids=ids) for ids in prompts], pooling_task="token_classify", use_tqdm=False
    )
    # data: (T, C) class probabilities per prompt token; only the scored rows travel back
    return [out.outputs.data[pos].float().tolist() for out, pos in zip(outputs, positions, strict=True)]


def _generate(llm: Any, prompts: list[list[int]], sampling: list[dict[str, Any]]) -> list[tuple[str, str, list[int]]]:
    from vllm.inputs import TokensPrompt

    requests = [TokensPrompt(prompt_token_ids=ids) for ids in prompts]
    outputs = llm.generate(requests, [_sampling_params(fields) for fields in sampling], use_tqdm=False)
    firsts = [out.outputs[0] for out in outputs]
    return [(first.text, str(first.finish_reason), list(first.token_ids)) for first in firsts]


def _sample(
    llm: Any, prompts: list[list[int]], sampling: list[dict[str, Any]]
) -> list[list[tuple[list[int], list[float]]]]:
    from vllm.inputs import TokensPrompt

    requests = [TokensPrompt(prompt_token_ids=ids) for ids in prompts]
    # logprobs=0: the sampled token's log-prob alone; no text is needed, so none is decoded
    params = [_sampling_params({"detokenize": False, **fields, "logprobs": 0}) for fields in sampling]
    outputs = llm.generate(requests, params, use_tqdm=False)
    return [[_ids_and_logprobs(c) for c in sorted(out.outputs, key=lambda c: c.index)] for out in outputs]


def _ids_and_logprobs(completion: Any) -> tuple[list[int], list[float]]:
    """A completion's ids and, per step, the log-prob of the id drawn (one dict per step)."""
    ids = list(completion.token_ids)
    steps = completion.logprobs
    return ids, [float(step[token].logprob) for step, token in zip(steps, ids, strict=True)]


def _sampling_params(fields: dict[str, Any]) -> Any:
    from vllm import SamplingParams
    from vllm.sampling_params import StructuredOutputsParams

    fields = dict(fields)
    schema = fields.pop("json_schema", None)
    if schema is not None:
        fields["structured_outputs"] = StructuredOutputsParams(json=schema)
    return SamplingParams(**fields)


def _one_line(err: BaseException) -> str:
    """``Type: message`` on one line (pydantic and vLLM errors span several; their links go)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    text = "; ".join(line for line in lines if not line.startswith("For further information"))
    return f"{type(err).__name__}: {text}"[:500]
