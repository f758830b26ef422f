import stat
from pathlib import Path

import pytest
import yaml

from diffenhance.config import (
    Config,
    ConfigError,
    ModelConfig,
    check_overrides,
    load_config,
    section_from_dict,
    write_resolved,
)
from tests.conftest import REPO


def test_repo_params_parse_and_match_defaults_types():
    cfg = load_config(REPO / "params.yaml")
    assert isinstance(cfg, Config)
    assert cfg.train.lr == pytest.approx(2e-4)
    assert cfg.degrade.tasks == ("sr2", "sr4", "denoise", "jpeg", "blind", "inpaint")
    assert isinstance(cfg.model.channel_mults, tuple)


def test_unknown_key_names_key_file_and_allowed(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("train:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert "'train.lrr'" in msg and str(p) in msg and "lr," in msg


def test_unknown_section(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("trian:\n  lr: 0.1\n")
    with pytest.raises(ConfigError, match=r"unknown key 'trian'.*train"):
        load_config(p)


@pytest.mark.parametrize(
    ("override", "pattern"),
    [
        ("train.steps=abc", r"'train\.steps' = 'abc' is invalid: expected int"),
        ("train.steps=1.5", r"'train\.steps' = 1\.5 is invalid: expected int"),
        ("train.compile=3", r"'train\.compile' = 3 is invalid: expected bool"),
        ("infer.sampler=euler", r"'infer\.sampler' .* expected 'ddim' \| 'ddpm'"),
        ("model.channel_mults=[1,x]", r"'model\.channel_mults\[1\]' = 'x'"),
        ("degrade.noise_sigma=[1]", r"'degrade\.noise_sigma'"),
        ("degrade.tasks=[sr8]", r"'degrade\.tasks\[0\]' = 'sr8'"),
    ],
)
def test_bad_types_name_the_key(override, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config(REPO / "params.yaml", [override])


def test_overrides_apply_and_parse_yaml_values():
    cfg = load_config(REPO / "params.yaml", ["train.lr=3e-4", "model.channel_mults=[1,2]"])
    assert cfg.train.lr == pytest.approx(3e-4)
    assert cfg.model.channel_mults == (1, 2)
    with pytest.raises(ConfigError, match="section.key"):
        load_config(REPO / "params.yaml", ["lr=3"])


@pytest.mark.parametrize(
    "override",
    [
        "storage.url=s3://AKIDSECRET1:s3cr3tKEY@bucket/p",
        "storage.url=s3://AKIDSECRET1@bucket/p",
        "storage.url=s3://AKIDSECRET1:s3cr/3tKEY@bucket/p",  # a '/' in the secret
        "storage.endpoint_url=http://AKIDSECRET1:s3cr3tKEY@127.0.0.1:8333",
        "storage.publish=[reports, 'https://AKIDSECRET1:s3cr3tKEY@host/x']",
        "s3://AKIDSECRET1:s3cr3tKEY@bucket/p",  # not even an override
    ],
)
def test_credentials_in_url_overrides_are_refused_without_echo(override):
    for call in (lambda: check_overrides([override]), lambda: load_config(None, [override])):
        with pytest.raises(ConfigError, match="credentials in a URL") as e:
            call()
        assert "AKIDSECRET1" not in str(e.value) and "3tKEY" not in str(e.value)


def test_urls_without_credentials_pass():
    ok = ["storage.url=s3://bucket/p/a@2x", "storage.endpoint_url=http://127.0.0.1:8333"]
    ok += ["storage.endpoint_url=http://[::1]:8333", "enhance.dask_address=tcp://h:8786"]
    ok += ["enhance.output=https://host:8080/a@b"]
    assert check_overrides(ok) == ok
    assert load_config(None, ok[:2]).storage.url == "s3://bucket/p/a@2x"


def test_invariants():
    with pytest.raises(ConfigError, match="tile_overlap"):
        load_config(None, ["infer.tile=64", "infer.tile_overlap=64"])
    with pytest.raises(ConfigError, match="data.folder"):
        load_config(None, ["data.source=folder"])


def test_frozen_and_resolved_roundtrip(tmp_path):
    cfg = load_config(None, ["train.steps=7"])
    with pytest.raises(AttributeError):
        cfg.train.steps = 8  # type: ignore[misc]
    out = write_resolved(cfg, tmp_path / "stage")
    again = load_config(out)
    assert again == cfg
    assert cfg.digest() == again.digest()
    assert cfg.digest("model") != load_config(None, ["model.base_channels=8"]).digest("model")


def test_resolved_config_is_written_atomically_with_the_umask_mode(tmp_path, umask_022):
    out = write_resolved(load_config(None, []), tmp_path / "stage", ["train"])
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
    assert [p.name for p in out.parent.iterdir()] == ["params.resolved.yaml"]  # no temp file


def test_section_from_dict_validates():
    m = section_from_dict(ModelConfig, {"base_channels": 8, "channel_mults": [1, 2]})
    assert m.base_channels == 8 and m.channel_mults == (1, 2)
    with pytest.raises(ConfigError, match="base_chanels"):
        section_from_dict(ModelConfig, {"base_chanels": 8})


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_params_yaml_lists_every_field():
    """params.yaml documents every tunable: each dataclass field appears in it."""
    raw = yaml.safe_load(Path(REPO / "params.yaml").read_text())
    full = Config().to_dict()
    for section, fields in full.items():
        assert section in raw, section
        missing = set(fields) - set(raw[section])
        assert not missing, f"{section}: {missing} not in params.yaml"
