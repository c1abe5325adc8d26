"""Policy specs: local folders, packaged GGUF files, hub ids; and their cache identity."""

from __future__ import annotations

import os
import shutil

import pytest

from nsa.errors import NSAError
from nsa.models import check_policy, policy_identity


def test_identity_changes_when_the_weights_change(tmp_path, tiny_model):
    """Retraining into the same folder must invalidate cached samples and log-probs."""
    folder = tmp_path / "policy"
    shutil.copytree(tiny_model, folder)
    before = policy_identity(str(folder))
    weights = folder / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 1_000_000_000))
    assert policy_identity(str(folder)) != before
    assert policy_identity(str(folder)) == policy_identity(str(folder))


def test_hub_ids_and_paths_are_told_apart(tmp_path):
    check_policy("deepseek-ai/DeepSeek-R1-Distill-Qwen-14B")  # a hub id: checked when loaded
    for missing in ("./nope", "runs/x/policy", str(tmp_path / "nope")):
        with pytest.raises(NSAError, match="does not exist"):
            check_policy(missing)
    with pytest.raises(NSAError, match="not installed"):
        check_policy("pkg:no_such_package/model.gguf")


def test_a_judge_is_rescored_when_its_local_weights_change(tmp_path, tiny_model):
    """A PRM retrained into the same folder must not reuse the cached scores of the old one."""
    from nsa.pipeline import scoring_identity
    from nsa.plugins.judges.prm import PRMJudge

    folder = tmp_path / "prm"
    shutil.copytree(tiny_model, folder)
    before = scoring_identity(PRMJudge(str(folder), convention="token-classification"))
    weights = folder / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 1_000_000_000))
    assert scoring_identity(PRMJudge(str(folder), convention="token-classification")) != before


def test_a_new_chat_template_file_is_a_new_policy(tmp_path):
    """Sampling prompts go through the chat template: a folder whose chat_template.jinja (or
    merges.txt) changes must not reuse the samples of the old one."""
    (tmp_path / "config.json").write_text("{}")
    before = policy_identity(str(tmp_path))
    (tmp_path / "chat_template.jinja").write_text("{{ messages }}")
    with_template = policy_identity(str(tmp_path))
    assert with_template != before and "chat_template.jinja" in with_template["files"]
    (tmp_path / "merges.txt").write_text("a b\n")
    assert "merges.txt" in policy_identity(str(tmp_path))["files"]
