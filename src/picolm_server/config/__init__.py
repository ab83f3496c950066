"""Configuration: the settings, their check before pydantic loads, the environment."""
