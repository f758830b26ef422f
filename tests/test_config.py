import os
import stat
import typing
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from diffenhance.cli import app
from diffenhance.config import (
    Config,
    ConfigError,
    DiffusionConfig,
    ModelConfig,
    OptionsOf,
    check_overrides,
    config_from_dict,
    load_config,
    load_yaml,
    plugin_options,
    section_from_dict,
    to_dict,
    with_options,
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


@pytest.mark.parametrize(
    ("override", "pattern"),
    [
        ("degrade.val_jpeg_quality=0", r"'degrade\.val_jpeg_quality' = 0 must be within 1\.\.100$"),
        ("degrade.val_jpeg_quality=101", r"'degrade\.val_jpeg_quality' = 101 must be within 1\.\.100$"),
        ("degrade.val_max_images=0", r"'degrade\.val_max_images' = 0 must be >= 1$"),
        ("degrade.val_size=2", r"'degrade\.val_size' = 2 must be >= 4 \(the largest scale of degrade\.tasks\)$"),
        ("degrade.val_size=0", r"'degrade\.val_size' = 0 must be >= 4 "),
        ("data.min_size=1", r"'data\.min_size' = 1 must be >= 4 \(the largest task scale\)$"),
    ],
)  # fmt: skip
def test_values_that_would_stop_degrade_part_way_are_refused(override, pattern):
    """Refused when params load, not after `degrade` has written some tasks' pairs (a JPEG
    quality of 0, no validation image, a validation or crop side below a task's scale)."""
    with pytest.raises(ConfigError, match=pattern):
        load_config(None, [override])


def test_sizes_are_checked_against_the_scales_of_the_tasks():
    """val_size needs the largest scale of the configured tasks only; the edges pass."""
    assert load_config(None, ["degrade.tasks=[denoise]", "degrade.val_size=1"]).degrade.val_size
    with pytest.raises(ConfigError, match="'degrade.val_size' = 1 must be >= 2"):
        load_config(None, ["degrade.tasks=[denoise, sr2]", "degrade.val_size=1"])
    ok = ["degrade.val_size=4", "data.min_size=4", "degrade.val_max_images=1"]
    ok += ["degrade.val_jpeg_quality=1", "degrade.blind_scale=1"]
    assert load_config(None, ok).data.min_size == 4


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
        for name, options in fields.items():  # plug-in options: every option of every plug-in
            if name == "options":
                assert _leaves(options) == _leaves(raw[section][name]), f"{section}.options"


def _leaves(tree: dict, prefix: str = "") -> set[str]:
    return {
        leaf
        for k, v in tree.items()
        for leaf in (_leaves(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k})
    }


def test_plugin_options_are_validated_by_their_class_and_named_in_errors():
    cfg = load_config(
        None, ["diffusion.options.pmrf.noise=0.2", "model.options.lr.predictor_blocks=4"]
    )
    assert (
        cfg.diffusion.options["pmrf"].noise == 0.2 and cfg.model.options["lr"].predictor_blocks == 4
    )
    assert cfg.diffusion.options["residual"].scale == 4.0  # not given: its class's default
    assert load_config(None, ["diffusion.options.residual.scale=4.0"]) == load_config(None)
    with pytest.raises(ConfigError, match=r"unknown key 'diffusion\.options\.resdual'.*residual"):
        load_config(None, ["diffusion.options.resdual.scale=2"])
    with pytest.raises(ConfigError, match=r"unknown key 'diffusion\.options\.pmrf\.nois';"):
        load_config(None, ["diffusion.options.pmrf.nois=0.2"])
    with pytest.raises(ConfigError, match=r"'diffusion\.options\.pmrf\.mean' = 'pmr' is invalid"):
        load_config(None, ["diffusion.options.pmrf.mean=pmr"])
    with pytest.raises(ConfigError, match=r"'model\.options\.lr\.predictor_blocks' = -1 must"):
        load_config(None, ["model.options.lr.predictor_blocks=-1"])
    with pytest.raises(
        ConfigError, match=r"'diffusion\.options' = 3 is invalid: expected a mapping"
    ):
        load_config(None, ["diffusion.options=3"])
    with pytest.raises(KeyError, match="the formulation 'sr3' declares no options"):
        cfg.diffusion.options["sr3"]
    d = with_options(cfg.diffusion, indi={"noise": 0.3})
    assert d.options["indi"].noise == 0.3 and d.options["pmrf"].noise == 0.2
    with pytest.raises(ConfigError, match=r"'options\.indi\.noise' = 2 must be in \[0, 1\]"):
        with_options(cfg.diffusion, indi={"noise": 2})


def test_the_flat_keys_of_before_plugin_options_still_load(tmp_path):
    """Checkpoints written before plug-in options hold 'residual_scale' and the like (every
    shipped model does): they load silently as options. A params file with them loads with a
    warning naming the new key (DVC stages depend on that one)."""
    flat = {"formulation": "pmrf", "residual_scale": 2.0, "indi_noise": 0.1, "pmrf_mean": "indi"}
    d = section_from_dict(DiffusionConfig, flat)
    assert d.options["residual"].scale == 2.0 and d.options["indi"].noise == 0.1
    assert d.options["pmrf"].mean == "indi"
    p = tmp_path / "params.yaml"
    p.write_text("diffusion:\n  residual_predictor_channels: 8\n")
    with pytest.warns(FutureWarning, match=r"'diffusion\.residual_predictor_channels' is now "
                      r"'diffusion\.options\.residual\.predictor_channels'"):  # fmt: skip
        cfg = load_config(p)
    assert cfg == load_config(None, ["diffusion.options.residual.predictor_channels=8"])
    p.write_text("diffusion:\n  residual_scale: 2\n  options:\n    residual:\n      scale: 3\n")
    with pytest.raises(ConfigError, match="'diffusion.residual_scale' and 'diffusion.options"):
        load_config(p)
    with pytest.raises(ConfigError, match="unknown key 'diffusion.residual_scael'"):
        load_config(None, ["diffusion.residual_scael=2"])


# issue 24 N5: every float is range-checked, NaN and infinity refused, in one line naming the
# key and what is allowed
@pytest.mark.parametrize(
    ("override", "pattern"),
    [
        ("train.lr=nan", r"'train\.lr' = nan must be a finite number > 0$"),
        ("train.lr=-1", r"'train\.lr' = -1\.0 must be a finite number > 0$"),
        ("train.lr=0", r"'train\.lr' = 0\.0 must be a finite number > 0$"),
        ("train.lr=inf", r"'train\.lr' = inf must be a finite number > 0$"),
        ("train.lr=.inf", r"'train\.lr' = inf must be a finite number > 0$"),
        ("train.ema_decay=2", r"'train\.ema_decay' = 2\.0 must be in \[0, 1\]$"),
        ("train.ema_decay=nan", r"'train\.ema_decay' = nan must be in \[0, 1\]$"),
        ("train.grad_clip=nan", r"'train\.grad_clip' = nan must be a finite number > 0"),
        ("train.weight_decay=-1", r"'train\.weight_decay' = -1\.0 must be a finite number >= 0"),
        ("infer.eta=nan", r"'infer\.eta' = nan must be in \[0, 1\]$"),
        ("infer.eta=1.5", r"'infer\.eta' = 1\.5 must be in \[0, 1\]$"),
        ("compare.ema_decay=-0.5", r"'compare\.ema_decay' = -0\.5 must be in \[0, 1\]$"),
        ("model.dropout=1", r"'model\.dropout' = 1\.0 must be in \[0, 1\)$"),
        ("degrade.noise_sigma=[5, .nan]", r"'degrade\.noise_sigma\[1\]' = nan must be in \[0, 255\]"),
        ("degrade.val_noise_sigma=-1", r"'degrade\.val_noise_sigma' = -1\.0 must be in \[0, 255\]"),
        ("diffusion.beta_end=1", r"'diffusion\.beta_end' = 1\.0 must be in \(0, 1\)$"),
        ("diffusion.beta_start=0.5", r"'diffusion\.beta_start' = 0\.5 must be <= diffusion\.beta_end"),
        ("diffusion.min_snr_gamma=-1", r"'diffusion\.min_snr_gamma' = -1\.0 must be a finite number >= 0"),
        ("diffusion.options.indi.t1_prob=nan", r"'diffusion\.options\.indi\.t1_prob' = nan must be in \[0, 1\]$"),
        ("diffusion.options.residual.scale=0", r"'diffusion\.options\.residual\.scale' = 0\.0 must be a finite number > 0$"),
        ("storage.read_timeout_s=inf", r"'storage\.read_timeout_s' = inf must be a finite number > 0$"),
    ],
)  # fmt: skip
def test_bad_float_values_name_the_key_and_the_range(override, pattern):
    with pytest.raises(ConfigError, match=pattern) as e:
        load_config(REPO / "params.yaml", [override])
    assert "\n" not in str(e.value)


def _float_fields() -> list[tuple[str, str, bool]]:
    """(section, field, is a list) of every float field of every section and of every
    plug-in's options ('diffusion', 'options.pmrf.noise'), found by type."""
    classes = [(section, "", cls) for section, cls in typing.get_type_hints(Config).items()]
    for section, _, cls in list(classes):
        for name, tp in typing.get_type_hints(cls, include_extras=True).items():
            opts = [a for a in typing.get_args(tp)[1:] if isinstance(a, OptionsOf)]
            for plugin, options in (plugin_options(opts[0].registry) if opts else {}).items():
                classes.append((section, f"{name}.{plugin}.", options))
    out = []
    for section, prefix, cls in classes:
        for name, tp in typing.get_type_hints(cls).items():
            args = typing.get_args(tp)
            if tp is float or (float in args and typing.get_origin(tp) is not tuple):
                out.append((section, prefix + name, False))
            elif typing.get_origin(tp) is tuple and float in args:
                out.append((section, prefix + name, True))
    return out


def test_float_fields_are_found():
    found = {f"{s}.{n}" for s, n, _ in _float_fields()}
    assert {"train.lr", "infer.eta", "degrade.noise_sigma", "infer.detail"} <= found
    assert "storage.read_timeout_s" in found and "train.steps" not in found
    assert {"diffusion.options.pmrf.noise", "diffusion.options.residual.scale"} <= found


@pytest.mark.parametrize(("section", "name", "is_list"), _float_fields())
@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
def test_every_float_field_refuses_nan_and_infinity(section, name, is_list, value):
    """Every float field, today's and any added later, refuses NaN and +-infinity, naming
    the key; none passes silently into training or sampling."""
    key = f"{section}.{name}"
    default = Config().to_dict()[section]
    for part in name.split("."):
        default = default[part]
    override = f"{key}=[{default[0]}, {value}]" if is_list else f"{key}={value}"
    with pytest.raises(ConfigError, match=rf"'{key}(\[1\])?' (= \S+ )?must be") as e:
        load_config(None, [override])
    assert "\n" not in str(e.value)


def test_float_defaults_and_edges_pass():
    ok = ["train.lr=1e30", "train.grad_clip=1e30", "train.ema_decay=1", "train.ema_decay=0"]
    ok += ["infer.eta=1", "infer.eta=0", "diffusion.beta_start=0.02", "degrade.noise_sigma=[0,0]"]
    cfg = load_config(REPO / "params.yaml", ok)
    assert cfg.train.lr == 1e30 and cfg.infer.eta == 0.0 and cfg.train.ema_decay == 0.0
    assert isinstance(load_config(None), Config)  # every default is in range


def test_checkpoint_sections_are_range_checked_too():
    with pytest.raises(ConfigError, match=r"'ModelConfig\.dropout' = nan must be in \[0, 1\)"):
        section_from_dict(ModelConfig, {"dropout": float("nan")})


# issue 24 N6: a key given twice and a YAML syntax error: one line, file, line, column


def test_duplicate_key_is_refused_naming_file_line_and_key(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("train:\n  steps: 300\n  lr: 0.1\n  steps: 400\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert msg.startswith(f"{p}: ") and "\n" not in msg
    assert "line 4, column 3: duplicate key 'train.steps' (first given on line 2)" in msg


def test_duplicate_section_is_refused(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("train:\n  steps: 3\ninfer:\n  eta: 0\ntrain:\n  lr: 0.1\n")
    with pytest.raises(ConfigError, match=r"line 5, column 1: duplicate key 'train' \(first"):
        load_config(p)


def test_yaml_merge_keys_may_override(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("train: &t\n  steps: 3\ncompare:\n  train_steps: 2\n")
    assert load_config(p).train.steps == 3  # anchors still load
    with pytest.raises(ConfigError, match="duplicate key 'x.b'"):
        load_yaml("y: &y {a: 1}\nx: {<<: *y, a: 2, b: 1, b: 2}\n", "s")
    assert load_yaml("y: &y {a: 1}\nx: {<<: *y, a: 2}\n", "s")["x"] == {"a": 2}


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("train:\n  steps: 300\n  lr: [1,\n", "line 4, column 1: "),
        ("train:\n  steps: 300\n lr: 1\n", "line 3, column 2: "),
        ("train:\n  steps: 'x\n", "line 3, column 1: "),
        ("train:\n\tsteps: 3\n", "line 2, column 1: "),
    ],
)
def test_yaml_syntax_error_is_one_line_with_line_and_column(tmp_path, text, where):
    p = tmp_path / "params.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert msg.startswith(f"{p}: not valid YAML: {where}") and "\n" not in msg, msg


def test_override_yaml_syntax_error_is_a_config_error():
    with pytest.raises(ConfigError, match=r"override 'train\.lr=\[1,': not valid YAML: line 1"):
        load_config(None, ["train.lr=[1,"])


def test_unreadable_params_file_is_one_line(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_bytes(b"train:\n  steps: \xff\n")
    with pytest.raises(ConfigError, match=r"not UTF-8 text \(byte 16\)"):
        load_config(p)


@pytest.mark.parametrize("case", ["nan", "duplicate", "syntax"])
def test_cli_prints_one_line_and_exits_2(tmp_path, case):
    p = tmp_path / "params.yaml"
    p.write_text({"duplicate": "train:\n  steps: 3\n  steps: 4\n", "syntax": "train: [1,\n"}
                 .get(case, "train:\n  steps: 3\n"))  # fmt: skip
    args = ["config", "show", "--params", str(p)] + (["train.lr=nan"] if case == "nan" else [])
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2, res.output
    assert res.stdout == "" and res.stderr.count("\n") == 1 and res.stderr.startswith("error: ")


def test_cli_version_and_a_command_per_stage():
    """`diffenhance --version`, and every dvc.yaml stage as a subcommand (train_compare is
    `diffenhance train` with the overrides its cmd shows)."""
    import diffenhance

    res = CliRunner().invoke(app, ["--version"])
    assert res.exit_code == 0 and res.stdout == f"diffenhance {diffenhance.__version__}\n"
    stages = {
        name
        for f in ("dvc.yaml", "compare/dvc.yaml")
        for name in yaml.safe_load((REPO / f).read_text())["stages"]
    }
    commands = {c.name or c.callback.__name__ for c in app.registered_commands}
    assert stages - {"train_compare"} <= commands


def test_cli_train_refuses_a_bad_param_in_one_line():
    res = CliRunner().invoke(app, ["train", "train.lr=nan"])
    assert res.exit_code == 2, res.output
    assert res.stderr.count("\n") == 1 and "'train.lr' = nan" in res.stderr


@pytest.mark.parametrize(
    ("line", "pattern"),
    [
        ("train:\n  steps: '5'", r"'train\.steps' = '5' is invalid: expected int$"),
        ("train:\n  steps: 2.0", r"'train\.steps' = 2\.0 is invalid: expected int$"),
        ("train:\n  compile: 1", r"'train\.compile' = 1 is invalid: expected bool$"),
        ("train:\n  lr: '2e-4'", r"'train\.lr' = '2e-4' is invalid: expected float$"),
        ("train:\n  lr: 2026-12-05", r"'train\.lr' = datetime\.date\(2026, 12, 5\) is invalid"),
        (
            "degrade:\n  noise_sigma: [1, 2, 3]",
            r"'degrade\.noise_sigma' = \[1, 2, 3\] is invalid: "
            r"expected list of 2 \(float, float\)$",
        ),
        (
            "model:\n  channel_mults: 2",
            r"'model\.channel_mults' = 2 is invalid: expected list of int",
        ),
        (
            "train:\n  init_from: 3",
            r"'train\.init_from' = 3 is invalid: expected str or null \(quote",
        ),
        # literals match by equality in pydantic: true == 1 and 8.0 == 8 must still be refused
        (
            "degrade:\n  blind_scale: true",
            r"'degrade\.blind_scale' = True is invalid: expected 1 \| 2 \| 4$",
        ),
        ("degrade:\n  blind_scale: 4.0", r"'degrade\.blind_scale' = 4\.0 is invalid"),
        (
            "enhance:\n  bit_depth: 8.0",
            r"'enhance\.bit_depth' = 8\.0 is invalid: expected 0 \| 8 \| 16$",
        ),
        (
            "evaluate:\n  sampler: 1",
            r"'evaluate\.sampler' = 1 is invalid: expected 'ddim' \| 'ddpm' or null \(quote",
        ),
        # YAML reads an unquoted inf or 1e3 as a number: say how to give the string
        (
            "enhance:\n  input: inf",
            r"'enhance\.input' = inf is invalid: expected str \(quote it to give a string\)$",
        ),
    ],
)
def test_values_are_checked_strictly_as_yaml_data(tmp_path, line, pattern):
    """Values are YAML data checked by pydantic in strict mode: no number from a quoted string,
    no bool from an int, no int from a float; the message names the file, key and type."""
    p = tmp_path / "params.yaml"
    p.write_text(line + "\n")
    with pytest.raises(ConfigError, match=pattern) as e:
        load_config(p)
    assert str(e.value).startswith(f"{p}: ")


def test_literal_values_of_the_right_kind_pass():
    cfg = config_from_dict({"degrade": {"blind_scale": 2}, "enhance": {"bit_depth": 16}})
    assert (cfg.degrade.blind_scale, cfg.enhance.bit_depth) == (2, 16)
    assert type(cfg.degrade.blind_scale) is int
    assert config_from_dict({"evaluate": {"sampler": None}}).evaluate.sampler is None


def test_a_file_name_that_is_not_utf8_is_kept(tmp_path):
    """os.fsdecode turns a non-UTF-8 file name into surrogate escapes, which JSON cannot
    carry: such a path given as enhance.input must reach the job unchanged."""
    name = os.fsdecode(b"photos-\xff")
    cfg = config_from_dict({"enhance": {"input": name}})
    assert cfg.enhance.input == name


def test_yaml_12_floats_are_numbers_where_pyyaml_reads_strings(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text(
        "train:\n  lr: 2e-4\n  grad_clip: 1E1\n  steps: 300\ndegrade:\n  noise_sigma: [5, 5e1]\n"
    )
    cfg = load_config(p)
    assert (cfg.train.lr, cfg.train.grad_clip, cfg.train.steps) == (2e-4, 10.0, 300)
    assert cfg.degrade.noise_sigma == (5.0, 50.0) and isinstance(cfg.degrade.noise_sigma[0], float)
    assert load_yaml("a: 1_000\nb: '2e-4'\nc: 12\nd: nan\ne: -inf\n", "x") == {
        "a": 1000, "b": "2e-4", "c": 12, "d": pytest.approx(float("nan"), nan_ok=True),
        "e": float("-inf")}  # fmt: skip


@pytest.mark.parametrize("key", ["infer.device", "train.device"])
@pytest.mark.parametrize("name", ["gpu", "CPU", "cuda:x", "cuda:-1", "cuda0"])
def test_a_misspelt_device_is_refused_by_name(key, name):
    with pytest.raises(
        ConfigError, match=rf"'{key}' must be one of auto, cpu, cuda, cuda:N or mps"
    ):
        load_config(None, [f"{key}={name}"])


def test_devices_that_are_not_on_this_machine_are_refused_by_name():
    torch = pytest.importorskip("torch")
    from diffenhance.infer import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    assert load_config(None, ["infer.device=cuda:1"]).infer.device == "cuda:1"  # a spelling
    if not torch.backends.mps.is_available():
        with pytest.raises(ValueError, match=r"infer.device='mps' but Metal \(MPS\) is not"):
            resolve_device("mps")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"train.device='cuda:1' but CUDA is not available"):
            resolve_device("cuda:1", "train.device")
    else:
        n = torch.cuda.device_count()
        with pytest.raises(ValueError, match=rf"has {n} CUDA device\(s\)"):
            resolve_device(f"cuda:{n}")
    with pytest.raises(ValueError, match=r"infer.device='gpu' is not a device"):
        resolve_device("gpu")


def test_builtin_defaults_differ_from_params_yaml_only_in_the_training_recipe():
    """A partial params file takes config.py's defaults; docs/training.md lists where they
    differ from params.yaml (the from-scratch recipe against the shipped two-stage one). Any
    other divergence is a default changed in one place only."""

    def flat(tree: object, path: str = "") -> dict[str, object]:
        if not isinstance(tree, dict):
            return {path: tree}
        return {
            k: v
            for name, sub in tree.items()
            for k, v in flat(sub, f"{path}.{name}".lstrip(".")).items()
        }

    builtin = flat(to_dict(Config()))
    repo = flat(to_dict(load_config(REPO / "params.yaml")))
    assert builtin.keys() == repo.keys()
    assert {k: (builtin[k], repo[k]) for k in builtin if builtin[k] != repo[k]} == {
        "model.space": ("hr", "lr"),
        "diffusion.loss": ("l1", "mse"),
        "diffusion.formulation": ("residual", "pmrf"),
        "diffusion.options.pmrf.noise": (0.1, 0.3),
        "diffusion.options.pmrf.train_mean": (True, False),
        "diffusion.options.pmrf.noise_map": ("uniform", "edges"),
        "diffusion.options.pmrf.noise_floor": (0.1, 0.0),
        "diffusion.options.pmrf.noise_power": (1.0, 2.0),
        "train.val_steps": (4, 1),
        "evaluate.steps": ([4, 8], [2, 4]),
        "compare.formulations": (
            ["regression", "indi", "residual", "sr3"],
            ["regression", "indi", "residual", "sr3", "pmrf"],
        ),
    }


def test_a_section_with_every_key_commented_out_takes_its_defaults(tmp_path):
    """`infer:` with every key commented out is YAML null: the section's defaults, as an empty
    file gives every default (a list is still refused)."""
    p = tmp_path / "params.yaml"
    p.write_text("infer:\n  # steps: 4\nevaluate:\n  max_images: 3\n")
    cfg = load_config(p)
    assert cfg.infer == load_config(None).infer and cfg.evaluate.max_images == 3
    p.write_text("infer: [1, 2]\n")
    with pytest.raises(ConfigError, match="'infer' must be a mapping, got \\[1, 2\\]"):
        load_config(p)
