"""MonitorConfig: every bad field is refused at once with what was wrong, what was expected and the fix."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from spectral_edge import MonitorConfig, SpectralMonitor
from spectral_edge.spectrum.stability import AdiabaticRegimes
from spectral_edge.tracking.config import resolve_config
from spectral_edge.tracking.events import EventThresholds

# field=value -> (the value as the message shows it, what it expected, the fix it names)
BAD = [
    ({"window": 1}, "got 1", "an int >= 2", "pass window=10"),
    ({"window": 2.5}, "got 2.5", "an int >= 2", "pass window=10"),
    ({"window": True}, "got True", "an int >= 2", "pass window=10"),
    ({"interval": 0}, "got 0", "an int >= 1", "pass interval=1"),
    ({"lr": 0.0}, "got 0.0", "> 0", "pass the optimizer's learning rate"),
    ({"lr": float("nan")}, "got nan", "> 0", "or None to leave 𝒜 out"),
    ({"lr": "fast"}, "got str", "a float, an optimizer, a callable or None", "pass lr=optimizer"),
    ({"groups": "bogus"}, "got 'bogus'", "'top', 'all', None, an int depth", "pass groups='top'"),
    ({"groups": 0}, "got 0", "a group depth must be >= 1", "pass groups=1"),
    ({"storage_dtype": torch.float16}, "got torch.float16", "must be one of", "pass torch.float32"),
    ({"storage_device": "gpu:x"}, "got 'gpu:x'", "must name a torch device", "pass 'cpu', 'cuda'"),
    ({"k95_threshold": 0.0}, "got 0.0", "in (0, 1]", "pass 0.95"),
    ({"alpha_c": -1.0}, "got -1.0", "a finite number > 0", "pass alpha_c=1.0"),
    ({"gap_units": "nats"}, "got 'nats'", "'sigma' or 'lambda'", "pass 'sigma'"),
    ({"gap_units": "lambda"}, "mean nothing", "default regime cut-offs", "pass regimes=AdiabaticRegimes"),
    ({"regimes": (0.1, 10)}, "got tuple", "an AdiabaticRegimes", "pass regimes=AdiabaticRegimes("),
    ({"events": {"open_ratio": 3}}, "got dict", "an EventThresholds", "pass events=EventThresholds("),
    ({"bbp_variant": "W"}, "got 'W'", "'PW' or 'P(W-1)'", "pass 'PW'"),
    ({"strict": 1}, "got 1", "True or False", "strict must be"),
    ({"history": -1}, "got -1", "an int >= 0", "pass history=0"),
    ({"chunk_size": 0}, "got 0", "an int >= 1", "pass a positive int"),
    ({"kernel": "cuda"}, "got 'cuda'", "'auto', 'fused' or 'torch'", "pass 'auto'"),
    (
        {"kernel": "fused", "storage_dtype": torch.float64},
        "not torch.float64",
        "needs a float32",
        "kernel='auto'",
    ),
    ({"user": ["a"]}, "got list", "a mapping", "pass a dict"),
]


@pytest.mark.parametrize(("field", "actual", "expected", "fix"), BAD, ids=lambda v: str(v)[:30])
def test_each_bad_field_names_its_value_what_was_expected_and_the_fix(field, actual, expected, fix):
    with pytest.raises(ValueError) as info:
        MonitorConfig(**field)
    message = str(info.value)
    assert actual in message and expected in message and fix in message, message
    # The monitor's keywords build the same object: the same message at construction.
    with pytest.raises(ValueError) as again:
        SpectralMonitor([torch.nn.Parameter(torch.zeros(3))], **field)
    assert str(again.value) == message


def test_the_config_is_frozen_all_the_way_and_keeps_what_was_given():
    config = MonitorConfig(window=5, groups=2, user={"run": "a"})
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.window = 6  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.user["run"] = "b"  # type: ignore[index]
    assert config.groups == 2 and config.user == {"run": "a"}
    assert "window=5" in repr(config)
    # None stands for the defaults of the nested settings, as the monitor's keywords always allowed.
    assert MonitorConfig(regimes=None, events=None) == MonitorConfig()
    assert MonitorConfig().regimes == AdiabaticRegimes() and MonitorConfig().events == EventThresholds()


def test_threads_is_deprecated_and_ignored():
    with pytest.warns(FutureWarning, match="threads=2 is ignored"):
        config = MonitorConfig(threads=2)
    assert config.threads == 2  # kept as given, and passed to nothing
    with pytest.warns(FutureWarning, match="threads=3 is ignored"):
        SpectralMonitor([torch.nn.Parameter(torch.zeros(3))], threads=3).close()


def test_gap_units_lambda_is_accepted_with_regimes_made_for_it():
    regimes = AdiabaticRegimes(low=1e-3, high=1.0, scale="none")
    assert MonitorConfig(gap_units="lambda", regimes=regimes).regimes is regimes


def test_resolve_config_takes_a_config_keywords_over_it_or_the_old_mapping_of_extras():
    base = MonitorConfig(window=8, lr=0.1)
    assert resolve_config(base, {}, caller="f") is base
    assert resolve_config(base, {"window": 4}, caller="f") == dataclasses.replace(base, window=4)
    legacy = resolve_config({"recipe": "grokking"}, {"window": 3}, caller="f")
    assert legacy.window == 3 and dict(legacy.user) == {"recipe": "grokking"}
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'windw' \(did you mean 'window'\?\)"):
        resolve_config(None, {"windw": 3}, caller="f")
    with pytest.raises(TypeError, match="config must be a MonitorConfig or a mapping"):
        resolve_config(3, {}, caller="f")
    with pytest.raises(ValueError, match="window must be"):
        resolve_config(base, {"window": 1}, caller="f")  # an override is checked like the rest


def test_the_monitor_takes_a_config_object_and_saves_it_as_the_keywords_would(tmp_path):
    from spectral_edge import RunStore

    p = torch.nn.Parameter(torch.zeros(4))
    config = MonitorConfig(window=3, lr=0.05, storage_dtype=torch.float64, user={"run": "a"})
    by_object = SpectralMonitor([p], config=config, store=tmp_path / "a")
    by_keywords = SpectralMonitor(
        [p], window=3, lr=0.05, storage_dtype=torch.float64, config={"run": "a"}, store=tmp_path / "b"
    )
    assert by_object.settings == by_keywords.settings == config
    assert by_object.window == 3 and by_object.lr == 0.05 and by_object.event_thresholds == config.events
    assert by_object.config() == by_keywords.config()
    by_object.close()
    by_keywords.close()
    with RunStore(tmp_path / "a") as a, RunStore(tmp_path / "b") as b:
        assert a.config() == b.config()
        assert a.config()["user"] == {"run": "a"} and a.config()["monitor"]["window"] == 3


def test_an_unknown_monitor_keyword_is_a_type_error_that_suggests_the_field():
    with pytest.raises(TypeError, match=r"SpectralMonitor\(\) got an unexpected keyword argument 'lr_'"):
        SpectralMonitor([torch.nn.Parameter(torch.zeros(3))], lr_=0.1)
