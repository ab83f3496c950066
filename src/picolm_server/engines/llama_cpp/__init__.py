"""The llama.cpp engine, in process (llama-cpp-python)."""
