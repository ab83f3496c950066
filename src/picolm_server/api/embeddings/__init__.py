"""OpenAI's embeddings (``POST /v1/embeddings``), on engines that can compute them."""
