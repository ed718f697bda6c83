from pathlib import Path

import pytest
import yaml

from fga.config import apply_overrides, load_params, params_hash
from fga.errors import UserError

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, cfg) -> Path:
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(cfg) if not isinstance(cfg, str) else cfg)
    return p


def default() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def test_repo_params_are_valid():
    cfg = load_params(ROOT / "params.yaml")
    assert cfg["grid"]["seeds"] and len(cfg["grid"]["seeds"]) >= 2


def test_set_overrides_parse_yaml_values(tmp_path):
    cfg = load_params(write(tmp_path, default()), ["train.epochs=2", "grid.seeds=[3, 4]", "train.device=cpu"])
    assert cfg["train"]["epochs"] == 2 and cfg["grid"]["seeds"] == [3, 4] and cfg["train"]["device"] == "cpu"


def test_override_does_not_mutate_input():
    cfg = {"a": {"b": 1}}
    assert apply_overrides(cfg, ["a.b=2"])["a"]["b"] == 2 and cfg["a"]["b"] == 1


def test_unknown_key_names_key_and_allowed(tmp_path):
    cfg = default()
    cfg["train"]["epochz"] = 3
    with pytest.raises(UserError) as err:
        load_params(write(tmp_path, cfg))
    msg = str(err.value)
    assert "train.epochz" in msg and "epochs" in msg and "\n" not in msg


def test_bad_enum_lists_allowed_values(tmp_path):
    with pytest.raises(UserError, match="allowed values: auto, cpu, cuda"):
        load_params(write(tmp_path, default()), ["train.device=tpu"])


def test_wrong_type_names_key(tmp_path):
    with pytest.raises(UserError, match="train.epochs"):
        load_params(write(tmp_path, default()), ["train.epochs=many"])


def test_malformed_yaml_one_line(tmp_path):
    with pytest.raises(UserError, match="not valid YAML at line 3") as err:
        load_params(write(tmp_path, "grid:\n  datasets: [synthetic\n"))
    assert "\n" not in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_params(tmp_path / "nope.yaml")


def test_bad_set_syntax(tmp_path):
    with pytest.raises(UserError, match="key.path=value"):
        load_params(write(tmp_path, default()), ["train.epochs"])


def test_params_hash_is_order_independent():
    assert params_hash({"a": 1, "b": [1, 2]}) == params_hash({"b": [1, 2], "a": 1})
    assert params_hash({"a": 1}) != params_hash({"a": 2})


def test_cli_prints_one_line_without_traceback(tmp_path, capsys):
    from fga.cli import main

    cfg = default()
    cfg["bogus"] = 1
    rc = main(["report", "--params", str(write(tmp_path, cfg))])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err and "bogus" in err
