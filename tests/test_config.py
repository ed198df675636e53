"""RunConfig: flat fields reach the right section, values are converted, bad values are named."""

import pytest

from agpnet.config import RunConfig, flat_fields
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
    ],
)
def test_bad_values_name_the_field(values, named):
    with pytest.raises(AgpnetError, match=named):
        RunConfig.from_flat(values)


def test_optional_fields_accept_none():
    cfg = RunConfig.from_flat({"category": "none", "shots": None})
    assert cfg.data.category is None and cfg.data.shots is None
