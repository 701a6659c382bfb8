"""Config tests: YAML/JSON files, dotted overrides, and a ValueError naming the key and what is allowed."""

import json

import pytest

from salt_model.config import ENCODERS, Config, load_config, parse_override


def test_defaults_build_and_validate():
    config = load_config()
    assert config == Config()
    assert config.model.encoder in ENCODERS


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_load_from_file_keeps_unset_defaults(tmp_path, suffix):
    raw = {"model": {"encoder": "resnet18", "width": 0.5}, "train": {"epochs": 7, "precision": "fp32"}}
    path = tmp_path / f"run{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(raw))
    else:
        path.write_text("model:\n  encoder: resnet18\n  width: 0.5\ntrain:\n  epochs: 7\n  precision: fp32\n")
    config = load_config(path)
    assert (config.model.encoder, config.model.width) == ("resnet18", 0.5)
    assert (config.train.epochs, config.train.precision) == (7, "fp32")
    assert config.schedule == Config().schedule  # sections not in the file keep the defaults
    assert config.data == Config().data


def test_empty_yaml_file_is_the_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert load_config(path) == Config()


def test_overrides_from_strings_and_dicts():
    config = load_config(
        None, ["train.epochs=3", "model.scse=false", "schedule.lr=0.01", "model.encoder=resnet18"]
    )
    assert config.train.epochs == 3 and isinstance(config.train.epochs, int)
    assert config.model.scse is False
    assert config.schedule.lr == pytest.approx(0.01)
    assert config.model.encoder == "resnet18"
    assert Config().with_overrides({"train.batch_size": 4}).train.batch_size == 4


def test_overrides_apply_after_the_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  epochs: 7\n  batch_size: 4\n")
    config = load_config(path, ["train.epochs=2"])
    assert (config.train.epochs, config.train.batch_size) == (2, 4)


def test_extends_reads_the_base_first_and_replaces_its_keys_one_by_one(tmp_path):
    (tmp_path / "presets").mkdir()
    (tmp_path / "presets" / "base.yaml").write_text(
        "model:\n  encoder: resnet18\n  width: 0.5\ntrain:\n  epochs: 7\n  batch_size: 4\n"
    )
    (tmp_path / "run.yaml").write_text(
        "extends: presets/base.yaml\ntrain:\n  epochs: 9\npseudo:\n  rounds: 1\n"
    )
    config = load_config(tmp_path / "run.yaml", ["train.batch_size=2"])
    assert (config.model.encoder, config.model.width) == ("resnet18", 0.5)  # the base's section
    assert (config.train.epochs, config.train.batch_size) == (9, 2)  # this file's key, then --set
    assert config.pseudo.rounds == 1


def test_extends_refuses_a_missing_base_a_loop_and_a_non_name(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(
        ValueError, match=r"a\.yaml: extends b\.yaml makes a loop|b\.yaml: extends a\.yaml makes a loop"
    ):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("extends: gone.yaml\n")
    with pytest.raises(ValueError, match=r"gone\.yaml: not found"):
        load_config(tmp_path / "c.yaml")
    (tmp_path / "d.yaml").write_text("extends: [a.yaml]\n")
    with pytest.raises(ValueError, match=r"d\.yaml: extends: expected a config file name"):
        load_config(tmp_path / "d.yaml")


def test_int_accepted_for_float_and_integral_float_for_int():
    config = load_config(None, ["schedule.lr=1", "train.epochs=3.0"])
    assert config.schedule.lr == 1.0 and isinstance(config.schedule.lr, float)
    assert config.train.epochs == 3 and isinstance(config.train.epochs, int)


def test_yaml_exponent_without_dot_is_a_float(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("schedule:\n  lr: 1e-3\n  min_lr: 1e-5\n")  # YAML 1.1 reads these as strings
    assert load_config(path).schedule.lr == pytest.approx(1e-3)


def test_parse_override():
    assert parse_override("train.epochs=3") == ("train.epochs", 3)
    assert parse_override("model.encoder_weights=null") == ("model.encoder_weights", None)
    assert parse_override(" model.scse = true") == ("model.scse", True)
    with pytest.raises(ValueError, match="expected 'section.key=value'"):
        parse_override("train.epochs")
    with pytest.raises(ValueError, match="expected 'section.key=value'"):
        parse_override("=3")


@pytest.mark.parametrize(
    "override, pieces",
    [
        # unknown section / key: the key and what is allowed
        (["nosuch.epochs=3"], ["'nosuch.epochs'", "model", "train"]),
        (["train"], ["'train'", "section.key=value"]),
        (["train.epoch=3"], ["train.epoch", "allowed in 'train'", "epochs"]),
        # wrong type: the key, the value and the expected type
        (["train.epochs=abc"], ["train.epochs", "'abc'", "wrong type", "int"]),
        (["train.epochs=2.5"], ["train.epochs", "2.5", "int"]),
        (["model.scse=3"], ["model.scse", "3", "bool"]),
        (["schedule.lr=true"], ["schedule.lr", "True", "float"]),
        (["schedule.lr=.nan"], ["schedule.lr", "nan", "float"]),
        (["model.encoder=3"], ["model.encoder", "3", "str"]),
        # out of range: the key, the value and the range
        (["train.epochs=0"], ["train.epochs=0", "out of range", ">= 1"]),
        (["model.width=5"], ["model.width=5.0", "(0, 4]"]),
        (["model.dropout=1"], ["model.dropout=1.0", "[0, 1)"]),
        (["data.pad=100"], ["data.pad=100", ">= 101"]),
        (["data.crop_size=120"], ["data.crop_size=120", "[32, 101]"]),
        (["schedule.min_lr=0.1", "schedule.lr=0.01"], ["schedule.min_lr=0.1", "<= schedule.lr=0.01"]),
        (["data.folds=5", "data.synthetic_train=8"], ["data.synthetic_train=8", ">= 2 x data.folds (10)"]),
        # bad choice: the key, the value and every allowed value
        (["model.encoder=resnet50"], ["model.encoder='resnet50'", "'resnet18'", "'resnet34'"]),
        (["schedule.name=linear"], ["schedule.name='linear'", "'cosine'", "'onecycle'"]),
        (["train.optimizer=rmsprop"], ["train.optimizer='rmsprop'", "'adam'", "'sgd'"]),
        (["train.precision=fp8"], ["train.precision='fp8'", "'bf16'", "'fp32'"]),
        (["data.pad_mode=zeros"], ["data.pad_mode='zeros'", "'reflect'", "'replicate'"]),
    ],
)
def test_bad_values_name_the_key_and_what_is_allowed(override, pieces):
    with pytest.raises(ValueError) as info:
        load_config(None, override)
    message = str(info.value)
    for piece in pieces:
        assert piece in message, f"{piece!r} not in {message!r}"


def test_file_errors_name_the_file_and_the_key(tmp_path):
    unknown_section = tmp_path / "a.yaml"
    unknown_section.write_text("trainer:\n  epochs: 3\n")
    with pytest.raises(ValueError, match=r"a\.yaml.*unknown section.*'trainer'"):
        load_config(unknown_section)

    unknown_key = tmp_path / "b.json"
    unknown_key.write_text(json.dumps({"model": {"depth": 50}}))
    with pytest.raises(ValueError, match=r"b\.json.*model\.depth.*allowed in 'model'"):
        load_config(unknown_key)

    not_a_mapping = tmp_path / "c.yaml"
    not_a_mapping.write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match=r"c\.yaml.*expected a mapping"):
        load_config(not_a_mapping)

    section_not_a_mapping = tmp_path / "d.yaml"
    section_not_a_mapping.write_text("train: 3\n")
    with pytest.raises(ValueError, match=r"section 'train' must be a mapping"):
        load_config(section_not_a_mapping)

    broken_json = tmp_path / "e.json"
    broken_json.write_text('{"train": {"epochs": 3,}')
    with pytest.raises(ValueError, match=r"e\.json.*not valid YAML/JSON"):
        load_config(broken_json)


def test_missing_config_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ValueError, match=r"nope\.yaml: not found"):
        load_config(missing)


def test_missing_encoder_weights_file_is_named(tmp_path):
    with pytest.raises(ValueError, match=r"model\.encoder_weights=.*no such file"):
        load_config(None, [f"model.encoder_weights={tmp_path / 'resnet34.pth'}"])


def test_to_dict_from_dict_round_trip(tmp_path):
    config = load_config(
        None,
        [
            "model.encoder=resnet18",
            "model.width=0.5",
            "train.epochs=3",
            "schedule.name=onecycle",
            "data.folds=4",
        ],
    )
    raw = config.to_dict()
    assert raw["model"]["width"] == 0.5 and raw["train"]["epochs"] == 3
    assert Config.from_dict(raw) == config
    # through JSON, as saved beside every checkpoint (tuples come back as lists)
    assert Config.from_dict(json.loads(json.dumps(raw))) == config
    path = tmp_path / "config.json"
    config.save(path)
    assert load_config(path) == config
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic write left no temporary file


def test_config_is_frozen():
    config = Config()
    with pytest.raises(AttributeError):
        config.train.epochs = 3  # type: ignore[misc]


@pytest.mark.parametrize("name", ["cpu.yaml", "cpu-pseudo.yaml", "tgs.yaml"])
def test_shipped_configs_load(name):
    from pathlib import Path

    from salt_model.config import STEMS

    config = load_config(Path(__file__).resolve().parents[1] / "configs" / name)
    assert config.model.stem in STEMS
    assert config.train.loss_switch_epoch < config.train.epochs
