"""The settings that ``PICOLM_*`` environment variables give, decoded by pydantic-settings.

Its environment source reads ``PICOLM_<SECTION>__<KEY>`` variables (any case), decodes a
section given whole as JSON (``PICOLM_SERVER='{"port": 9000}'``) and a list as JSON,
and merges the two. :mod:`.config` imports this module only when such a variable is set
and merges what it returns with the file and the flags.

pydantic-settings reads a pydantic model's fields; :func:`pydantic_model` builds one
from the settings dataclasses (types, bounds, defaults and conversions), so the
dataclasses stay the one place the settings are declared.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from typing import Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, create_model
from pydantic_settings import BaseSettings, EnvSettingsSource, SettingsConfigDict

from .check import Before, Bounds, field_hints
from .settings import ENV_NESTED_DELIMITER, ENV_PREFIX, Settings


def _annotation(hint: Any) -> Any:
    """A dataclass field's type as pydantic reads it."""
    if typing.get_origin(hint) is typing.Annotated:
        inner, *extras = typing.get_args(hint)
        validators = [
            BeforeValidator(extra.convert) for extra in extras if isinstance(extra, Before)
        ]
        return typing.Annotated.__class_getitem__((_annotation(inner), *validators))
    if dataclasses.is_dataclass(hint):
        return pydantic_model(hint)  # type: ignore[arg-type]
    origin = typing.get_origin(hint)
    if origin is list:
        (item,) = typing.get_args(hint)
        return list[_annotation(item)]  # type: ignore[misc]
    if origin in (typing.Union, types.UnionType):
        inner = [_annotation(arg) for arg in typing.get_args(hint) if arg is not type(None)]
        return typing.Optional.__getitem__(*inner)
    return hint


@functools.cache
def pydantic_model(cls: type, base: type[BaseModel] = BaseModel) -> type[BaseModel]:
    """A pydantic model with the fields of the settings dataclass ``cls`` (sections
    become nested models), forbidding unknown keys and validating defaults as the
    settings do."""
    hints = field_hints(cls)
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        bounds: Bounds = f.metadata.get("bounds", Bounds())
        if f.default is not dataclasses.MISSING:
            default = Field(default=f.default, ge=bounds.ge, gt=bounds.gt, le=bounds.le)
        elif f.default_factory is dataclasses.MISSING:  # required
            default = Field(ge=bounds.ge, gt=bounds.gt, le=bounds.le)
        else:  # a section (its own model's defaults) or an empty list
            factory: Any = f.default_factory
            if dataclasses.is_dataclass(factory):
                factory = pydantic_model(factory)  # type: ignore[arg-type]
            default = Field(default_factory=factory)
        fields[f.name] = (_annotation(hints[f.name]), default)
    config = None if base is not BaseModel else ConfigDict(extra="forbid", validate_default=True)
    model: type[BaseModel] = create_model(cls.__name__, __base__=base, __config__=config, **fields)
    return model


class _EnvironmentBase(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_NESTED_DELIMITER,
        extra="forbid",
        validate_default=True,
    )


def read_environment() -> dict[str, Any]:
    """The values the environment sets, by field, as pydantic-settings decodes them."""
    settings_model = pydantic_model(Settings, _EnvironmentBase)
    return EnvSettingsSource(settings_model)()  # type: ignore[arg-type]
