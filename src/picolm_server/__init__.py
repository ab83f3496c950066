"""picolm-server: an OpenAI-compatible HTTP API for local LLM inference."""

__version__ = "0.1.0"
