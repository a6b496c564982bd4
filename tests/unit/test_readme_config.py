"""The README's YAML example lists every setting of Config, each with its default."""

from __future__ import annotations

import dataclasses

import yaml

from rpc import Config
from tests.readme import code_blocks


def test_the_yaml_example_lists_every_setting_with_its_default():
    (example,) = [
        block
        for block in code_blocks("Writing and calling services", "yaml")
        if block.startswith("# rpc.yaml")
    ]
    shown = yaml.safe_load(example)
    defaults = {
        field.name: (
            field.default_factory()
            if field.default_factory is not dataclasses.MISSING
            else field.default
        )
        for field in dataclasses.fields(Config)
    }
    assert list(shown) == list(defaults), "the example lists the fields in order"
    for name, default in defaults.items():
        value = shown[name]
        if isinstance(default, tuple):
            value = tuple(value)
        assert value == default, name
    # And the file loads as it is.
    assert Config(**{**shown, "middleware": tuple(shown["middleware"])}) == Config()
