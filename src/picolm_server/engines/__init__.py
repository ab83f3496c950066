"""Inference engines: PicoLM as a subprocess, llama.cpp in-process, behind one interface."""
