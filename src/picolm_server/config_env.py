"""The settings that ``PICOLM_*`` environment variables give, decoded by pydantic-settings.

Its environment source reads ``PICOLM_<SECTION>__<KEY>`` variables (any case), decodes a
section given whole as JSON (``PICOLM_SERVER='{"port": 9000}'``) and a list as JSON,
and merges the two. :mod:`.config` imports this module only when such a variable is set
and merges what it returns with the file and the flags.
"""

from __future__ import annotations

from typing import Any

from pydantic_settings import BaseSettings, EnvSettingsSource, SettingsConfigDict

from .config import ENV_NESTED_DELIMITER, ENV_PREFIX, Settings


class _EnvironmentSettings(BaseSettings, Settings):
    """:class:`~.config.Settings` as the ``BaseSettings`` whose environment is read."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_NESTED_DELIMITER,
        extra="forbid",
        validate_assignment=True,
    )


def read_environment() -> dict[str, Any]:
    """The values the environment sets, by field, as pydantic-settings decodes them."""
    return EnvSettingsSource(_EnvironmentSettings)()
