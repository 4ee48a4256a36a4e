"""Bad inputs outside the recipe are one `error:` line naming the culprit, never a traceback."""

from __future__ import annotations

import pytest
import torch
import yaml

from dp_train.cli import main
from dp_train.resume import AtomicCheckpointIO, CheckpointError
from tests.test_sharded import Payload


@pytest.mark.parametrize("content", ["trainer:\n  max_steps: 10\n", "hello, I am not a checkpoint\n", ""])
@pytest.mark.parametrize("command", ["fit", "validate"])
def test_a_text_or_yaml_file_as_ckpt_path_is_one_error_line(tmp_path, capsys, content, command):
    path = tmp_path / "last.ckpt.yaml"
    path.write_text(content)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"trainer": {"logger": False}, "model": {"preset": "tiny"}}))
    assert main([command, "--recipe", str(recipe), "--ckpt_path", str(path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"error: {path}: ") and "Traceback" not in "\n".join(err), err[-5:]


def test_a_checkpoint_file_never_runs_pickled_code_even_when_torch_is_told_to(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": {}, "callbacks": Payload(tmp_path / "MARKER")}, path)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # torch's switch back to plain pickle
    with pytest.raises(CheckpointError, match=f"{path}: not a torch checkpoint file .or it holds more than tensors"):
        AtomicCheckpointIO().load_checkpoint(path)
    assert not (tmp_path / "MARKER").exists()
