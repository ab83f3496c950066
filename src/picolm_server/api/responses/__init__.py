"""OpenAI's Responses API (``/v1/responses``): request and object types, the conversion
to a chat-style generation, stream events, and the store of past responses."""
