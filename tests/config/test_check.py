"""The settings check: pydantic's lax conversions on plain dataclasses, every problem
reported at once by dotted key (tests/config/test_env.py holds it to pydantic itself
over many files and environments)."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Literal

import pytest

from picolm_server.config.check import Before, SettingsInvalid, setting, validate_settings
from picolm_server.config.settings import LoggingSection, ServerSection, Settings


def test_defaults_are_the_dataclass_defaults() -> None:
    assert validate_settings(Settings, {}) == Settings()


def test_values_are_converted_as_pydantic_does() -> None:
    settings = Settings.from_values(
        {
            "server": {
                "port": "9000",
                "max_queue": 3.0,
                "metrics_public": "yes",
                "ui": 0,
                "header_timeout": "2.5",
                "max_body": "1MiB",
                "cors_origins": "https://a, https://b",
            },
            "logging": {"level": "DEBUG"},
        }
    )
    assert settings.server == dataclasses.replace(
        ServerSection(),
        port=9000,
        max_queue=3,
        metrics_public=True,
        ui=False,
        header_timeout=2.5,
        max_body=1024 * 1024,
        cors_origins=["https://a", "https://b"],
    )
    assert settings.logging == LoggingSection(level="debug")


def test_every_problem_is_named_at_once() -> None:
    with pytest.raises(SettingsInvalid) as caught:
        Settings.from_values(
            {
                "engine": "gpt",
                "server": {"port": 70000, "max_queue": 1.5, "extra": 1, "cors_origins": [1]},
                "picolm": "not a section",
                "logging": {"log_requests": "maybe"},
            }
        )
    assert [key for key, _ in caught.value.problems] == [
        "engine",
        "server.port",
        "server.max_queue",
        "server.cors_origins[0]",
        "server.extra",
        "picolm",
        "logging.log_requests",
    ]
    text = str(caught.value)
    assert "\n" not in text
    assert "server.port: Input should be less than or equal to 65535 (got 70000)" in text
    assert "server.extra: unknown key" in text


def test_settings_are_frozen() -> None:
    settings = Settings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.server.port = 1  # type: ignore[misc]


def _lower(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError("not text")
    return value.lower()


@dataclasses.dataclass(frozen=True)
class _Sample:
    ratio: float = setting(0.5, gt=0.0, le=1.0)
    mode: Annotated[Literal["a", "b"], Before(_lower)] = "a"
    tags: list[str] = dataclasses.field(default_factory=list)


@pytest.mark.parametrize(
    ("values", "problem"),
    [
        ({"ratio": 0}, "ratio: Input should be greater than 0 (got 0)"),
        ({"ratio": "nan"}, "ratio: Input should be greater than 0 (got 'nan')"),
        ({"ratio": True}, None),  # pydantic reads a boolean as 1
        ({"mode": "B"}, None),
        ({"mode": "c"}, "mode: Input should be 'a' or 'b' (got 'c')"),
        ({"mode": 3}, "mode: Value error, not text (got 3)"),
        ({"tags": "x"}, "tags: Input should be a valid list (got 'x')"),
        ({"tags": ("x", "y")}, None),
    ],
)
def test_a_dataclass_of_ones_own(values: dict[str, object], problem: str | None) -> None:
    if problem is None:
        validate_settings(_Sample, values)
        return
    with pytest.raises(SettingsInvalid) as caught:
        validate_settings(_Sample, values)
    assert str(caught.value).startswith(problem)
