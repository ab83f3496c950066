"""OpenAI's legacy text completions (``POST /v1/completions``): a raw prompt, no chat
template."""
