"""``TrainConfig`` on the strict config base: choices checked when a config is made, unknown keys
refused with the accepted ones, range checks naming the CLI option, and ``--resume`` comparing
with states saved by earlier versions."""

from __future__ import annotations

import pytest

from threads_search.errors import ConfigError
from trainer.config import TrainConfig
from trainer.loop import _config_diff


@pytest.mark.parametrize(
    "field, value, words",
    [
        ("pair_by", "patients", "'sample', 'patient'"),
        ("bag_by", "case", "'patient', 'slide'"),
        ("rna_units", "fpkm", "'tpm', 'counts', 'log'"),
        ("select_metric", "val_recall", "'val_mean_recall', 'val_rankme'"),
        ("slide_encoder", "transformer", "--slide-encoder 'transformer': use one of mean, threads"),
        ("device", "gpu", "--device gpu: use auto, cpu, cuda or cuda:N"),
        ("batch_size", 1, "--batch-size 1: InfoNCE needs at least 2 items a batch"),
        ("val_fraction", 1.0, "--val-fraction 1.0: must be in [0, 1)"),
        ("epochs", 0, "--epochs, --accum-steps and --max-patches must be at least 1"),
    ],
)
def test_bad_settings_are_refused_when_the_config_is_made(field, value, words):
    """Before, a misspelt choice (``pair_by='patients'``) was accepted here and failed, or
    silently did something else, deep inside training."""
    with pytest.raises(ConfigError) as e:
        TrainConfig(**{field: value})
    assert words in str(e.value)
    assert isinstance(e.value, ValueError)  # code that caught ValueError keeps working


def test_devices_and_encoders_that_exist_are_accepted():
    for device in ("auto", "cpu", "cuda", "cuda:1"):
        assert TrainConfig(device=device).device == device
    assert TrainConfig(slide_encoder="mean").slide_encoder == "mean"


def test_from_dict_round_trips_and_refuses_unknown_keys():
    cfg = TrainConfig(features="f", pairs="p", out="o", rna="r", epochs=3, pair_by="patient")
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match=r"unknown setting\(s\) 'epoch'; accepted: features"):
        TrainConfig.from_dict({**cfg.to_dict(), "epoch": 3})


def test_resume_compares_with_a_state_of_an_earlier_version():
    """A state saved before a setting existed counts it as its default; tuples saved by an
    older writer equal the lists of today's ``to_dict``."""
    new = TrainConfig(features="f", pairs="p", out="o", rna_config={"hidden_dims": [64]})
    old = new.to_dict()
    del old["min_train_items"], old["val_fraction"]
    old["rna_config"] = {"hidden_dims": (64,)}
    assert _config_diff(old, new.to_dict()) == []
    assert _config_diff(old, new.replace(min_train_items=4).to_dict()) == ["min_train_items"]
    assert _config_diff({**old, "lr": 1.0}, new.to_dict()) == ["lr"]
