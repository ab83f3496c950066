"""The PicoLM engine: a one-shot C program run per generation."""
