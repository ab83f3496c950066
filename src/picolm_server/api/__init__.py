"""The wire APIs other than chat completions, one package each."""
