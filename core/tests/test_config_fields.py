"""The shared validators of transport configuration fields, on an attrs class as a
plugin declares one."""

from __future__ import annotations

from typing import Any

import pytest
from attrs import field, frozen

from dotmac.events.config_fields import FieldChecks
from dotmac.events.errors import ConfigurationError

check = FieldChecks("ExampleConfig")


@frozen
class ExampleConfig:
    host: str = field(default="localhost", validator=check.host)
    port: int = field(default=9000, validator=check.int_in(1, 65535))
    db: int = field(default=0, validator=check.int_in(0))
    prefetch_count: int | None = field(default=None, validator=check.optional(check.int_in(1)))
    timeout: float = field(default=5.0, validator=check.positive_number)
    max_age: float = field(default=0.0, validator=check.non_negative_number)
    password: str | None = field(default=None, repr=False, validator=check.optional_text)
    mode: str = field(default="safe", validator=check.choice("safe", "fast"))
    ssl: bool = field(default=False, validator=check.is_bool)


def test_defaults_and_good_values_pass() -> None:
    config = ExampleConfig(
        host="::1",
        port=65535,
        db=7,
        prefetch_count=1,
        timeout=0.25,
        password="s3cr3t",
        mode="fast",
        ssl=True,
    )
    assert (config.port, config.prefetch_count, config.mode) == (65535, 1, "fast")
    assert ExampleConfig(prefetch_count=None, password=None, timeout=1).timeout == 1
    assert ExampleConfig(max_age=0).max_age == 0
    assert ExampleConfig(max_age=2.5, timeout=10**400).max_age == 2.5  # a huge int is finite


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"port": 0}, "ExampleConfig.port must be an int from 1 to 65535, got 0"),
        ({"port": 65536}, "ExampleConfig.port must be an int from 1 to 65535, got 65536"),
        ({"port": "9000"}, "ExampleConfig.port must be an int from 1 to 65535, got '9000'"),
        ({"port": True}, "ExampleConfig.port must be an int from 1 to 65535, got True"),
        ({"db": -1}, "ExampleConfig.db must be an int >= 0, got -1"),
        ({"prefetch_count": 0}, "ExampleConfig.prefetch_count must be an int >= 1, got 0"),
        ({"timeout": 0}, "ExampleConfig.timeout must be a number > 0, got 0"),
        ({"timeout": float("nan")}, "ExampleConfig.timeout must be a number > 0, got nan"),
        ({"timeout": False}, "ExampleConfig.timeout must be a number > 0, got False"),
        ({"timeout": float("inf")}, "ExampleConfig.timeout must be a finite number > 0, got inf"),
        ({"timeout": float("-inf")}, "ExampleConfig.timeout must be a number > 0, got -inf"),
        ({"max_age": -0.5}, "ExampleConfig.max_age must be a number >= 0, got -0.5"),
        ({"max_age": float("nan")}, "ExampleConfig.max_age must be a number >= 0, got nan"),
        ({"max_age": float("inf")}, "ExampleConfig.max_age must be a finite number >= 0, got inf"),
        ({"max_age": "1"}, "ExampleConfig.max_age must be a number >= 0, got '1'"),
        ({"max_age": True}, "ExampleConfig.max_age must be a number >= 0, got True"),
        ({"host": ""}, "ExampleConfig.host must be a host name or address, got ''"),
        ({"host": "db.internal/0"}, "ExampleConfig.host must be a host name or address, got 'db.internal/0'"),
        ({"host": "db internal"}, "ExampleConfig.host must be a host name or address, got 'db internal'"),
        ({"mode": "risky"}, "ExampleConfig.mode must be 'safe' or 'fast', got 'risky'"),
        ({"ssl": 1}, "ExampleConfig.ssl must be a bool, got 1"),
    ],
)
def test_a_bad_value_names_class_field_expectation_and_value(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        ExampleConfig(**kwargs)
    assert str(info.value) == message


@pytest.mark.parametrize("bad", ["", 12345])
def test_text_fields_never_repeat_their_value(bad: object) -> None:
    with pytest.raises(ConfigurationError) as info:
        ExampleConfig(password=bad)  # type: ignore[arg-type]
    assert str(info.value) == "ExampleConfig.password must be a non-empty str or None"
    assert "12345" not in str(info.value)


def test_error_is_the_configuration_error_of_the_owner() -> None:
    error = FieldChecks("OtherConfig").error("retries", "an int >= 0", -2)
    assert isinstance(error, ConfigurationError)
    assert str(error) == "OtherConfig.retries must be an int >= 0, got -2"
