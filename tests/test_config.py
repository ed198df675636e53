"""RunConfig: flat fields reach the right section, values are converted, bad values are named."""

import numpy as np
import pytest

from agpnet.config import NUMBER_RULES, AGPNetConfig, RunConfig, TrainConfig, flat_fields, load_yaml_config
from agpnet.errors import AgpnetError


def test_flat_fields_route_to_their_sections():
    cfg = RunConfig.from_flat(
        {
            "dataset": "visa",
            "epochs": "7",
            "noise": "none",
            "blocks": "1,2",
            "weights": "random",
            "save_maps": "true",
            "shots": 4,
            "backbone_kwargs": '{"depth": 2}',
        }
    )
    assert cfg.data.dataset == "visa" and cfg.data.shots == 4
    assert cfg.train.epochs == 7
    assert (
        cfg.model.noise == "none" and cfg.model.blocks == (1, 2) and cfg.model.backbone_kwargs == {"depth": 2}
    )
    assert cfg.eval.save_maps is True
    assert cfg.weights == "random"


def test_round_trip_through_dict_and_flat():
    cfg = RunConfig.from_flat({"category": "a,b", "alpha_max": 5, "blocks": [3, 9]})
    assert RunConfig.from_dict(cfg.to_dict()) == cfg
    assert RunConfig.from_flat(cfg.to_flat()) == cfg


def test_field_names_are_unique_and_complete():
    names = flat_fields()
    assert {"dataset", "epochs", "noise", "eval_batch_size", "weights", "device", "out_dir"} <= set(names)


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"epochs": "ten"}, "epochs"),
        ({"epochs": 2.5}, "epochs"),
        ({"noise": "loud"}, "noise"),
        ({"ema_decoder": "maybe"}, "ema_decoder"),
        ({"dataset": None}, "dataset"),
        ({"bogus": 1}, "bogus"),
        ({"realiad_resolution": 300}, "realiad_resolution=.300.: expected one of 256, 512, 1024, raw"),
        ({"realiad_split": "realiad_jsons/../x"}, "realiad_split"),
        ({"realiad_split": ".."}, "realiad_split"),
    ],
)
def test_bad_values_name_the_field(values, named):
    with pytest.raises(AgpnetError, match=named):
        RunConfig.from_flat(values)


def test_realiad_options_from_yaml_numbers_and_flags(tmp_path):
    """A YAML 256 is the folder name "256"; the options reach load_split through reader_options()."""
    path = tmp_path / "cfg.yaml"
    path.write_text("dataset: realiad\nrealiad_resolution: 256\nrealiad_split: realiad_jsons_sv\n")
    cfg = RunConfig.from_flat(load_yaml_config(path))
    assert cfg.data.reader_options() == {"realiad_resolution": "256", "realiad_split": "realiad_jsons_sv"}
    assert RunConfig.from_flat({"realiad_resolution": "raw"}).data.realiad_resolution == "raw"
    assert RunConfig().data.reader_options() == {"realiad_resolution": "1024", "realiad_split": "realiad_jsons"}


def test_optional_fields_accept_none():
    cfg = RunConfig.from_flat({"category": "none", "shots": None})
    assert cfg.data.category is None and cfg.data.shots is None


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"lr": "nan"}, "train config lr=nan: expected a finite number > 0"),
        ({"lr": -1}, "train config lr=-1.0: expected a finite number > 0"),
        ({"lr": ".inf"}, "train config lr=inf"),
        ({"weight_decay": -5}, "train config weight_decay=-5.0: expected a finite number >= 0"),
        ({"num_workers": -3}, "train config num_workers=-3: expected an integer >= 0"),
        ({"grad_clip": -1}, "train config grad_clip=-1.0: expected a finite number >= 0"),  # was: clipping off
        ({"seed": -1}, "train config seed=-1: expected an integer in [0, 4294967295]"),
        ({"decoder_mlp_ratio": 0}, "model config decoder_mlp_ratio=0.0"),
        ({"alpha_max": "inf"}, "model config alpha_max=inf"),
        ({"shots": 0}, "data config shots=0: expected an integer >= 1"),
        ({"fpr_limit": 0}, "eval config fpr_limit=0.0: expected a finite number in (0, 1]"),
        ({"epochs": "true"}, "config field 'epochs': got True; expected int"),  # was: 1 epoch
        ({"epochs": True}, "config field 'epochs': got True; expected int"),
        ({"lr": False}, "config field 'lr': got False; expected float"),
        ({"blocks": [2.5, 3]}, "config field 'blocks': got [2.5, 3]; expected a list of int"),
        ({"blocks": [True, 3]}, "config field 'blocks'"),
    ],
)
def test_numbers_are_checked_wherever_the_config_comes_from(values, message):
    with pytest.raises(AgpnetError) as info:
        RunConfig.from_flat(values)
    assert message in str(info.value)


def test_numbers_are_checked_when_a_section_is_built_in_code():
    with pytest.raises(AgpnetError, match="lr=nan"):
        TrainConfig(lr=float("nan"))
    with pytest.raises(AgpnetError, match="epochs=True"):
        TrainConfig(epochs=True)
    with pytest.raises(AgpnetError, match="image_size=64.5"):
        AGPNetConfig(image_size=64.5)
    assert TrainConfig(lr=1, seed=np.int64(3)).lr == 1  # ints are numbers; numpy integers are integers


def test_every_numeric_field_has_a_range():
    numeric = [name for name, annotation in flat_fields().items() if annotation in (int, float, int | None, float | None)]
    assert "lr" in numeric and "shots" in numeric
    assert set(numeric) == set(NUMBER_RULES)


def test_a_key_given_twice_in_a_config_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("epochs: 5\nmodel_stuff:\n  a: 1\nepochs: 1\n")
    with pytest.raises(AgpnetError) as info:
        load_yaml_config(path)
    assert str(info.value) == f"{path} line 4: key 'epochs' was already given on line 1; expected each key once"
    path.write_text("base: &b {lr: 1}\nother:\n  <<: *b\n  lr: 2\n")  # a merge key may be overridden
    assert load_yaml_config(path) == {"base": {"lr": 1}, "other": {"lr": 2}}


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"category": ["fabric", "wood"]}, "config field 'category': got ['fabric', 'wood']; expected str"),
        ({"root": ["a", "b"]}, "config field 'root': got ['a', 'b']; expected str"),
        ({"weights": {"a": 1}}, "config field 'weights': got {'a': 1}; expected str"),
        ({"device": True}, "config field 'device': got True; expected str"),
    ],
)
def test_text_fields_refuse_lists_mappings_and_booleans(values, message):
    """Was: turned into their Python text ("['fabric', 'wood']") and failed later, garbled."""
    with pytest.raises(AgpnetError) as info:
        RunConfig.from_flat(values)
    assert str(info.value) == message


def test_text_fields_take_numbers_as_names():
    cfg = RunConfig.from_flat({"category": 123, "realiad_resolution": 512, "blocks": [1, 2]})
    assert (cfg.data.category, cfg.data.realiad_resolution, cfg.model.blocks) == ("123", "512", (1, 2))


@pytest.mark.parametrize(
    ("text", "line", "key"),
    [
        ("epochs: 1\n2: 3\n", 2, "2"),
        ("null: 3\n", 1, "None"),
        ("yes: 1\n", 1, "True"),
        ("'': 1\n", 1, "''"),
        ("epochs: 1\nbackbone_kwargs:\n  depth: 2\n  1.5: 2\n", 4, "1.5"),
        ("[a, b]: 1\n", 1, "['a', 'b']"),
    ],
)
def test_config_file_keys_must_be_non_empty_strings(tmp_path, text, line, key):
    """Was: AttributeError ('int' object has no attribute 'replace') from RunConfig.from_flat."""
    path = tmp_path / "run.yaml"
    path.write_text(text)
    with pytest.raises(AgpnetError) as info:
        load_yaml_config(path)
    assert str(info.value).startswith(f"{path} line {line}: key {key}: expected a non-empty string")


def test_repeats_with_other_seeds_start_from_other_decoder_weights(tiny_model_fields):
    """Review fix: init_seed was 0 whatever the seed, so an ablation's three seeds differed only in
    data order and noise, and their error bars left out the decoder's initialisation."""
    import warnings

    import torch

    from agpnet.model import build_model

    configs = [RunConfig.from_flat({**tiny_model_fields, "seed": seed}) for seed in (0, 1)]
    assert [c.model.init_seed for c in configs] == [0, 1] and configs[1].to_flat()["init_seed"] == 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random encoder weights
        decoders = [build_model(c.model, "random")[0].decoder.state_dict() for c in configs]
    assert any(not torch.equal(value, decoders[1][name]) for name, value in decoders[0].items())
    assert RunConfig.from_flat({"seed": 1, "init_seed": 0}).model.init_seed == 0  # given: kept
