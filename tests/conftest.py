"""Test-wide settings: one torch thread (2-core CI), no hub access; the tiers.

Every marker registered in pyproject.toml names a tier. ``pytest`` runs the fast tier, the
tests that carry none of them; ``pytest --all`` runs every tier (the README's test command and
CI do), and ``-m EXPR`` picks tiers as usual (``pytest -m vllm``). Under xdist the vLLM tests
share one worker (in-process engines pin torch's threads and are shared within a module), and
the jobs of several processes share another, so two of them never compete for the 2 cores.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

torch.set_num_threads(1)

import pytest  # noqa: E402

from tests.tiny import build_model  # noqa: E402

# The xdist group of a tier's tests; the first marker of a test that names a group wins.
GROUPS = {"multiprocess": "processes", "server": "processes", "vllm": "vllm"}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--all", action="store_true", help="run every tier, not only the fast one (see pyproject.toml)")


def tiers_chosen(config: pytest.Config) -> bool:
    """Whether the run picks its tiers itself: --all, or a -m expression."""
    return bool(config.getoption("--all") or config.getoption("markexpr"))


def tiers(config: pytest.Config) -> list[str]:
    """The registered markers' names: each is a tier outside the fast one."""
    return [line.split(":")[0].strip() for line in config.getini("markers")]


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    names = tiers(config)
    for item in items:
        group = next((GROUPS[m.name] for m in item.iter_markers() if m.name in GROUPS), None)
        if group:
            item.add_marker(pytest.mark.xdist_group(group))
    if tiers_chosen(config):
        return
    fast = [item for item in items if not any(item.get_closest_marker(name) for name in names)]
    if len(fast) < len(items):
        kept = set(fast)
        config.hook.pytest_deselected(items=[item for item in items if item not in kept])
        items[:] = fast


def pytest_report_header(config: pytest.Config) -> str | None:
    if tiers_chosen(config):
        return None
    return f"the fast tier: tests marked {', '.join(tiers(config))} are left out (--all runs them)"


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    """A tiny random Llama with its own BPE, saved once per test session."""
    return str(build_model(tmp_path_factory.mktemp("tiny-llama")))
