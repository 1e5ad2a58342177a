import pytest

from labkit.config import ConfigError, load

BASELINE = "params/01_baseline_bert_squad/baseline.yaml"


def write(tmp_path, text, name="cfg.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_profile_lies_under_config_and_overrides_on_top(tmp_path):
    path = write(tmp_path, "task: bert_squad\ntrain: {precision: '32', batch_size: 4}\n")
    cfg = load(path, "smoke", {"train.lr": 0.01})
    assert cfg.model.preset == "tiny"  # from the smoke profile
    assert cfg.train.batch_size == 4  # the configuration file wins over the profile
    assert cfg.train.lr == 0.01  # the override wins over both
    assert load(path, "gpu").model.preset == "base"
    nested = load(path, "gpu", {"train": {"lr": 0.01}, "model": {"compile": True}})  # a section changes only its keys
    assert (nested.train.lr, nested.train.batch_size, nested.model.compile, nested.model.preset) == (0.01, 4, True, "base")


def test_every_committed_params_file_validates_under_every_profile():
    from labkit.config import PARAMS_DIR, PROFILES

    files = [p for p in PARAMS_DIR.rglob("*.yaml") if p.parent.name != "profiles"]
    assert files
    for path in files:
        for profile in PROFILES:
            if (PARAMS_DIR / "profiles" / f"{profile}.yaml").exists():
                load(path, profile)


def test_unknown_key_names_file_key_and_suggestion(tmp_path):
    path = write(tmp_path, "task: bert_squad\ntrain: {batch_sise: 8}\n")
    with pytest.raises(ConfigError) as err:
        load(path)
    message = str(err.value)
    assert str(path) in message and "train.batch_sise" in message and "did you mean 'batch_size'" in message


def test_unknown_top_level_section_suggests(tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'train'"):
        load(write(tmp_path, "task: bert_squad\ntrian: {lr: 1.0}\n"))


@pytest.mark.parametrize("text, key, words", [
    ("train: {precision: fp15}", "train.precision", "bf16-mixed"),
    ("train: {strategy: horovod}", "train.strategy", "ddp"),
    ("train: {batch_size: -8}", "train.batch_size", "greater than 0"),
    ("data: {num_workers: -1}", "data.num_workers", "greater than or equal to 0"),
    ("train: {lr: fast}", "train.lr", "number"),
])
def test_impossible_values_name_the_key_and_allowed_values(tmp_path, text, key, words):
    with pytest.raises(ConfigError) as err:
        load(write(tmp_path, f"task: bert_squad\n{text}\n"))
    assert key in str(err.value) and words in str(err.value)


def test_cross_field_rules(tmp_path):
    with pytest.raises(ConfigError, match="doc_stride"):
        load(write(tmp_path, "task: bert_squad\ndata: {max_length: 64, doc_stride: 64}\n"))
    with pytest.raises(ConfigError, match="data.path"):
        load(write(tmp_path, "task: bert_squad\ndata: {source: local}\n"))


def test_missing_file_and_profile(tmp_path):
    with pytest.raises(ConfigError, match="Did you mean 'params/01_baseline_bert_squad/baseline.yaml'"):
        load("params/01_baseline_bert_squad/baselin.yaml")
    with pytest.raises(ConfigError, match="profile 'huge' does not exist"):
        load(BASELINE, "huge")
    with pytest.raises(ConfigError, match="task"):
        load(write(tmp_path, "train: {lr: 0.1}\n"))


def test_invalid_yaml_names_the_file(tmp_path):
    path = write(tmp_path, "task: [bert\n")
    with pytest.raises(ConfigError, match="not valid YAML") as err:
        load(path)
    assert str(path) in str(err.value)
