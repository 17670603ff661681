"""Recipe validation, error messages and dotted overrides."""

import pytest

from tunelab.config.load import load_recipe
from tunelab.errors import TunelabError


def write(tmp_path, text, name="recipe.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


MINIMAL = "data:\n  train: rows.jsonl\n"


def test_defaults_and_output_dir_from_file_name(tmp_path):
    recipe = load_recipe(write(tmp_path, MINIMAL, "my-run.yaml"))
    assert recipe.model.name == "smollm2-135m-instruct"
    assert recipe.method.name == "lora" and recipe.method.r == 16
    assert recipe.output.dir == "runs/my-run"


def test_unknown_key_names_key_line_and_closest_valid_key(tmp_path):
    path = write(tmp_path, MINIMAL + "train:\n  epochs: 1\n  lrr: 0.1\n")
    with pytest.raises(TunelabError) as error:
        load_recipe(path)
    assert str(error.value) == f"{path}:5: unknown key 'train.lrr'; did you mean 'train.lr'?"


def test_unknown_section_lists_the_valid_ones(tmp_path):
    with pytest.raises(TunelabError, match=r"unknown key 'trainer'; did you mean 'train'\?"):
        load_recipe(write(tmp_path, MINIMAL + "trainer: {}\n"))


def test_overrides_are_parsed_as_yaml_values(tmp_path):
    overrides = ["train.lr=1e-4", "train.max_steps=7", "method.target_modules=[q_proj]", "train.padding_free=false"]
    recipe = load_recipe(write(tmp_path, MINIMAL), overrides)
    assert recipe.train.lr == pytest.approx(1e-4)
    assert recipe.train.max_steps == 7
    assert recipe.method.target_modules == ["q_proj"]
    assert recipe.train.padding_free is False


def test_bad_override_is_blamed_on_the_command_line(tmp_path):
    with pytest.raises(TunelabError, match="^command line: unknown key 'train.lrr'; did you mean 'train.lr'"):
        load_recipe(write(tmp_path, MINIMAL), ["train.lrr=1"])
    with pytest.raises(TunelabError, match="not of the form"):
        load_recipe(write(tmp_path, MINIMAL), ["train.lr"])


def test_option_of_another_method_names_its_method(tmp_path):
    path = write(tmp_path, MINIMAL + "method:\n  name: full\n  r: 8\n")
    with pytest.raises(TunelabError, match="'method.r' is an option of method 'lora', not of 'full'"):
        load_recipe(path)


def test_unknown_method_lists_the_methods(tmp_path):
    with pytest.raises(TunelabError, match="unknown method 'lorax' \\(available: lora, full"):
        load_recipe(write(tmp_path, MINIMAL + "method:\n  name: lorax\n"))


def test_wrong_value_type_names_the_field(tmp_path):
    with pytest.raises(TunelabError, match=r"recipe.yaml:4: train.scheduler: Input should be 'linear', 'cosine' or "
                                           r"'constant' \(got 'cosinus'\)"):
        load_recipe(write(tmp_path, MINIMAL + "train:\n  scheduler: cosinus\n"))


def test_data_needs_one_source(tmp_path):
    with pytest.raises(TunelabError, match="exactly one of data.train"):
        load_recipe(write(tmp_path, "data:\n  split: {test: 0.1}\n"))


def test_malformed_yaml_names_the_line(tmp_path):
    with pytest.raises(TunelabError, match=r"recipe.yaml:3: not valid YAML"):
        load_recipe(write(tmp_path, "data:\n  train: a.jsonl\n  - b\n"))


def test_missing_recipe_file(tmp_path):
    with pytest.raises(TunelabError, match="recipe file not found"):
        load_recipe(tmp_path / "nope.yaml")
