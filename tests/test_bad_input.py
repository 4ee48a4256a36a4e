"""Bad inputs outside the recipe are one `error:` line naming the culprit, never a traceback."""

from __future__ import annotations

import pytest
import yaml

from dp_train.cli import main


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
