"""Prompts: chat templates, their sandbox, and prompt token counting."""
