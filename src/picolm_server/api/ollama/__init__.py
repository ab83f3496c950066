"""Ollama's API (``/api/*``) over the same generation core and model shelf."""
