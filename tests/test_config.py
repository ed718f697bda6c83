import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fga.config import (apply_overrides, evaluation_section, for_dataset, load_params, merged, params_hash,
                        resolve_methods)
from fga.errors import UserError
from fga.models.registry import method_section

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


def test_overlays_merge_in_order_below_set_overrides(tmp_path):
    params = write(tmp_path, default())
    first, second = tmp_path / "first.yaml", tmp_path / "second.yaml"
    first.write_text("train: {epochs: 7, batch_size: 32}\ngrid: {seeds: [5]}\n")
    second.write_text("train: {epochs: 9}\n")
    cfg = load_params(params, ["train.batch_size=16"], [first, second])
    assert cfg["train"]["epochs"] == 9 and cfg["train"]["batch_size"] == 16 and cfg["grid"]["seeds"] == [5]
    assert cfg["train"]["lr"] == default()["train"]["lr"]  # keys no layer sets keep the params file's value


def test_overlay_errors_name_the_overlay(tmp_path):
    params = write(tmp_path, default())
    bad_value, not_yaml = tmp_path / "bad.yaml", tmp_path / "broken.yaml"
    bad_value.write_text("train: {epochs: many}\n")
    not_yaml.write_text("train: [epochs\n")
    with pytest.raises(UserError, match=r"^.*bad\.yaml: .*epochs"):
        load_params(params, [], [bad_value])
    with pytest.raises(UserError, match=r"broken\.yaml: not valid YAML"):
        load_params(params, [], [not_yaml])
    with pytest.raises(UserError, match=r"missing\.yaml: overlay \(--configfile\) not found"):
        load_params(params, [], [tmp_path / "missing.yaml"])


def test_cli_takes_overlays_like_snakemake(tmp_path):
    params = write(tmp_path, default())
    (tmp_path / "o.yaml").write_text("train: {epochs: many}\n")
    out = subprocess.run([sys.executable, "-m", "fga", "report", "--params", str(params), "--configfile",
                          str(tmp_path / "o.yaml")], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 2 and "o.yaml" in out.stderr and "Traceback" not in out.stderr


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


# ------------------------------------------------------------------ the resolved params file Snakemake jobs read


def test_resolved_params_file_is_content_addressed_and_never_rewritten(tmp_path):
    from fga.config import write_resolved

    cfg = load_params(ROOT / "params.yaml")
    first = write_resolved(cfg, tmp_path)
    assert first.name.startswith("params-") and yaml.safe_load(first.read_text()) == cfg
    os.utime(first, (1, 1))
    assert write_resolved(cfg, tmp_path) == first and first.stat().st_mtime == 1  # same config: untouched
    other = write_resolved(apply_overrides(cfg, ["train.epochs=3"]), tmp_path)
    assert other != first and first.stat().st_mtime == 1 and yaml.safe_load(first.read_text()) == cfg
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([first.name, other.name])  # no temp files left


# ------------------------------------------------------------------------------- snakemake --config values


def test_snakemake_config_values_are_typed_by_the_schema():
    from snakemake.cli import parse_config

    from fga.config import typed_config

    # exactly what Snakemake hands the Snakefile for these command-line arguments (nested values are strings)
    raw = parse_config(['train={"epochs": 3, "lr": 1e-3, "amp": false, "lr_milestones": [1, 2], "device": cpu}',
                        'grid={"seeds": [0, 1]}',
                        'evaluate={"protocol": [coco1k, coco5k], "block_images": null,'
                        ' "bootstrap": {"confidence": 0.9}}',
                        'tracking={"artifact_root": null, "uri": "sqlite:///x.db"}',
                        'methods={"grm": {"num_prompts": 8, "adapter_hidden": null, "adapter_activation": none}}'])
    assert raw["train"]["epochs"] == "3" and raw["grid"]["seeds"] == ["0", "1"]
    typed = typed_config(raw)
    assert typed["train"] == {"epochs": 3, "lr": 1e-3, "amp": False, "lr_milestones": [1, 2], "device": "cpu"}
    assert typed["grid"] == {"seeds": [0, 1]}
    assert typed["evaluate"] == {"protocol": ["coco1k", "coco5k"], "block_images": None,
                                 "bootstrap": {"confidence": 0.9}}
    assert typed["tracking"] == {"artifact_root": None, "uri": "sqlite:///x.db"}
    assert typed["methods"]["grm"] == {"num_prompts": 8, "adapter_hidden": None, "adapter_activation": "none"}


def test_snakemake_config_merges_typed_values_and_names_the_layer_of_an_error(tmp_path):
    from snakemake.cli import parse_config

    from fga.config import snakemake_config

    params = ROOT / "params.yaml"
    base = yaml.safe_load(params.read_text())
    cli = parse_config(['train={"epochs": 3}'])
    cfg = snakemake_config(merged(base, cli), [params], [], cli)
    assert cfg["train"]["epochs"] == 3 and cfg["train"]["lr"] == base["train"]["lr"]

    overlay = tmp_path / "overlay.yaml"
    overlay.write_text("train: {epoch: 3}\n")
    with pytest.raises(UserError) as err:
        snakemake_config(merged(base, {"train": {"epoch": 3}}), [params], [overlay], {})
    msg = str(err.value)
    assert msg.startswith(f"{overlay}: unknown key train.epoch;") and "did you mean epochs?" in msg
    assert "\n" not in msg
    cli = parse_config(['train={"epochs": many}'])
    with pytest.raises(UserError, match=r"^--config: train.epochs = 'many' is invalid"):
        snakemake_config(merged(base, cli), [params], [], cli)


# ------------------------------------------------------------------------------------------- method variants


def test_a_change_of_the_base_method_reaches_every_variant(tmp_path):
    cfg = load_params(ROOT / "params.yaml",
                      ["methods.grm.num_prompts=8", "methods.grm.per_backbone.lite0_roi={margin: 0.3}"])
    variants = [m for m, s in cfg["methods"].items() if s.get("arch") == "grm"]
    assert set(cfg["grid"]["ablation"]["methods"]) <= set(variants)
    own = yaml.safe_load((ROOT / "params.yaml").read_text())["methods"]  # the K sweep's variants set their own K
    for m in variants:
        assert cfg["methods"][m]["num_prompts"] == own[m].get("num_prompts", 8), m
        assert cfg["methods"][m]["per_backbone"]["lite0_roi"] == {"margin": 0.3}
        # a variant's own K wins on Swin too; the others keep grm's K = 50 there
        assert cfg["methods"][m]["per_backbone"].get("swin_base_224") == (
            None if "num_prompts" in own[m] else {"num_prompts": 50}), m
    assert cfg["methods"]["grm_no_sa"]["use_saliency"] is False and cfg["methods"]["grm"]["use_saliency"] is True


def test_a_variant_defined_in_an_overlay_inherits_the_params_section(tmp_path):
    from fga.config import snakemake_config

    params = ROOT / "params.yaml"
    overlay = {"methods": {"grm_k8": {"arch": "grm", "num_prompts": 8,
                                      "per_backbone": {"swin_base_224": {"margin": 0.1}}},
                           "grm_k8_no_sa": {"arch": "grm_k8", "use_saliency": False}}}
    path = tmp_path / "overlay.yaml"
    path.write_text(yaml.safe_dump(overlay))
    cfg = snakemake_config(merged(default(), overlay), [params], [path], {})
    grm, k8 = cfg["methods"]["grm"], cfg["methods"]["grm_k8"]
    assert k8["embed_dim"] == grm["embed_dim"] == 128 and k8["num_prompts"] == 8 and k8["arch"] == "grm"
    assert k8["per_backbone"]["swin_base_224"] == {"margin": 0.1}  # its own K = 8 replaces grm's Swin K = 50
    assert method_section(cfg, "grm_k8", "swin_base_224")["num_prompts"] == 8
    assert method_section(cfg, "grm", "swin_base_224")["num_prompts"] == 50
    chained = cfg["methods"]["grm_k8_no_sa"]
    assert chained["arch"] == "grm" and chained["num_prompts"] == 8 and chained["use_saliency"] is False
    assert resolve_methods(cfg) == cfg  # resolving the resolved config (the jobs' params file) changes nothing


def test_variants_that_inherit_in_a_circle_are_one_line_errors():
    cfg = {"methods": {"a": {"arch": "b"}, "b": {"arch": "a"}}}
    with pytest.raises(UserError, match="a -> b -> a .* in a circle"):
        resolve_methods(cfg)


def _anchored(text: str) -> str:
    """params.yaml as it was written before variants were resolved in code: YAML merges of the base section."""
    bases = set(re.findall(r"^  \w+: \{arch: (\w+),", text, flags=re.M))
    for base in bases:
        text = re.sub(rf"^  {base}:(\s)", rf"  {base}: &{base}\1", text, count=1, flags=re.M)
    return re.sub(r"^  (\w+): \{arch: (\w+),", r"  \1: {<<: *\2, arch: \2,", text, flags=re.M)


def test_resolved_variants_equal_the_yaml_merges_they_replace_so_run_hashes_stay():
    from fga.train import run_hash

    text = (ROOT / "params.yaml").read_text()
    assert "<<:" not in text and "&" not in text.split("\nmethods:")[1].split("\nevaluate:")[0]
    anchored = yaml.safe_load(_anchored(text))
    cfg = load_params(ROOT / "params.yaml")
    assert anchored["methods"] != yaml.safe_load(text)["methods"]  # the merges did fill the variants in
    raw = yaml.safe_load(text)["methods"]
    for name, section in anchored["methods"].items():
        if raw[name].get("arch") and "num_prompts" in raw[name]:  # a K variant's own K replaces grm's Swin K = 50
            section = {**section, "per_backbone": {}}
        assert list(cfg["methods"][name].items()) == list(section.items()), name  # same keys, values, order
    grid = cfg["grid"]
    runs = [(d, b, m) for d in grid["datasets"] for b in grid["backbones"] + grid["ablation"]["backbones"]
            for m in grid["methods"] + grid["ablation"]["methods"]]
    assert len(runs) > 10
    for d, b, m in runs:
        assert run_hash(cfg, d, b, m, 0) == run_hash({**cfg, "methods": anchored["methods"]}, d, b, m, 0), (d, b, m)


# --------------------------------------------------------------------------------- per-dataset evaluation


def test_per_dataset_evaluation_settings_merge_over_the_global_ones(tmp_path):
    from fga.evaluate.run import settings

    cfg = load_params(ROOT / "params.yaml", ["evaluate.per_dataset={coco: {protocol: [coco1k, coco5k], "
                                             "qbnorm: {enabled: false}}}"])
    coco, synthetic = evaluation_section(cfg, "coco"), evaluation_section(cfg, "synthetic")
    assert coco["protocol"] == ["coco1k", "coco5k"] and coco["qbnorm"]["enabled"] is False
    assert coco["qbnorm"]["beta"] == cfg["evaluate"]["qbnorm"]["beta"] and "per_dataset" not in coco
    plain = default()["evaluate"]
    # what the Snakemake rules list as params: a coco entry leaves synthetic's unchanged, key order included
    assert repr(synthetic) == repr(plain)
    assert settings(for_dataset(cfg, "coco"))["protocol"] == ["coco1k", "coco5k"]
    assert settings(for_dataset(cfg, "synthetic"))["protocol"] == "full" == settings(cfg)["protocol"]
    assert for_dataset(for_dataset(cfg, "coco"), "coco") == for_dataset(cfg, "coco")


@pytest.mark.parametrize("override, match", [
    ("evaluate.per_dataset={coco: {split: val}}", "unknown key evaluate.per_dataset.coco.split"),
    ("evaluate.per_dataset={cocoo: {protocol: coco5k}}",
     "evaluate.per_dataset: unknown name 'cocoo'; allowed: synthetic, coco"),
    ("evaluate.per_dataset={coco: {protocol: coco2k}}", "evaluate.per_dataset.coco.protocol"),
])
def test_per_dataset_evaluation_settings_are_validated(tmp_path, override, match):
    with pytest.raises(UserError, match=match):
        load_params(write(tmp_path, default()), [override])


# ------------------------------------------------------------------------------- under Snakemake (dry runs)


def _dry_run(project: Path, *args: str) -> subprocess.CompletedProcess:
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run([str(bin_dir / "snakemake"), "-n", "-p", "--cores", "1", *args], cwd=project, env=env,
                          capture_output=True, text=True, timeout=300)


def test_snakemake_reads_overlays_and_config_like_the_cli(tmp_path):
    """One-line schema errors naming the overlay, typed --config values, params files no dry run rewrites."""
    for name in ("Snakefile", "params.yaml"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "workflow", tmp_path / "workflow")
    (tmp_path / "typo.yaml").write_text("train: {epoch: 3}\n")
    (tmp_path / "k8.yaml").write_text("methods: {grm: {num_prompts: 8}}\n")

    bad = _dry_run(tmp_path, "--configfile", "typo.yaml")
    assert bad.returncode == 2, bad.stderr[-2000:]
    assert bad.stderr.strip().splitlines() == [
        f"fga: error: typo.yaml: unknown key train.epoch; allowed keys here: {', '.join(sorted(default()['train']))}"
        "; did you mean epochs?"]

    typed = _dry_run(tmp_path, "--config", 'train={"epochs": 3}')
    assert typed.returncode == 0, typed.stderr[-2000:]
    [params_file] = set(re.findall(r"--params (\S+)", typed.stdout))
    first = tmp_path / params_file
    assert yaml.safe_load(first.read_text())["train"]["epochs"] == 3
    os.utime(first, (1, 1))
    overlay = _dry_run(tmp_path, "--configfile", "k8.yaml")
    assert overlay.returncode == 0, overlay.stderr[-2000:]
    [other] = set(re.findall(r"--params (\S+)", overlay.stdout))
    resolved = yaml.safe_load((tmp_path / other).read_text())
    assert other != params_file and resolved["methods"]["grm_no_rp"]["num_prompts"] == 8
    assert first.stat().st_mtime == 1 and yaml.safe_load(first.read_text())["train"]["epochs"] == 3
