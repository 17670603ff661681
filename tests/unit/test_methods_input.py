"""Bad method input: one line naming what is wrong, exit code 2, nothing written."""

import pytest
import yaml

from tests.conftest import tiny_recipe
from tests.unit.test_cli import invoke, one_error_line
from tunelab.config.load import load_recipe
from tunelab.errors import TunelabError
from tunelab.methods.registry import METHODS

MINIMAL = "data:\n  train: rows.jsonl\n"


@pytest.mark.parametrize("method, key, owner", [
    ("lora", "num_virtual_tokens: 8", "prefix"),
    ("prefix", "r: 8", "lora"),
    ("lora", "size: 8", "adapter"),
    ("ia3", "block_size: 64", "qlora"),
    ("full", "init_text: hello", "prompt"),
])
def test_an_option_of_another_method_names_its_method(tmp_path, method, key, owner):
    path = tmp_path / "recipe.yaml"
    path.write_text(MINIMAL + f"method:\n  name: {method}\n  {key}\n")
    option = key.split(":")[0]
    with pytest.raises(TunelabError, match=rf"recipe.yaml:5: 'method.{option}' is an option of method '{owner}', "
                                           rf"not of '{method}'"):
        load_recipe(path)


def test_unknown_method_lists_every_method(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(MINIMAL + "method:\n  name: houlsby\n")
    with pytest.raises(TunelabError) as error:
        load_recipe(path)
    assert str(error.value) == (f"{path}:4: method.name: unknown method 'houlsby' (available: {', '.join(METHODS)})")
    assert set(METHODS) == {"full", "lora", "dora", "qlora", "prefix", "prompt", "ia3", "adapter"}


@pytest.mark.parametrize("method, message", [
    ({"name": "adapter", "target_modules": ["nothing"]},
     "method.target_modules: ['nothing'] match no layer of the model; its linear layers are: down_proj, gate_proj"),
    ({"name": "dora", "target_modules": ["qkv"]}, "match no layer of the model; its linear layers are: down_proj"),
    ({"name": "qlora", "block_size": 96},
     "method qlora: no 4-bit backend can quantize layer 'model.layers.0.self_attn.q_proj' (32x32 weights are not a "
     "multiple of method.block_size=96)"),
    ({"name": "prefix", "num_virtual_tokens": 4}, "output.merge: method 'prefix' cannot be merged into the base"),
])
def test_bad_method_input_is_one_line_and_exit_2(capsys, tmp_path, home, tiny_checkpoint, reverse_data, method,
                                                  message):
    merge_asked = {"merge": True} if method["name"] == "prefix" else {}
    recipe = tiny_recipe(tmp_path, tiny_checkpoint, reverse_data, method=method, output=merge_asked)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    code, _, err = invoke(capsys, "train", str(path))
    assert code == 2
    assert message in one_error_line(err)
    assert not (tmp_path / "run").exists()
