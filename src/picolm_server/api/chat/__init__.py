"""OpenAI chat completions over the generation core: :mod:`.convert` (request in),
:mod:`.respond` (completion and chunks out), :mod:`.routes` (the endpoint)."""
