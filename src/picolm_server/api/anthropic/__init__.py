"""Anthropic's Messages API (``POST /v1/messages``, ``POST /v1/messages/count_tokens``).

:mod:`.types` holds the request and response shapes, :mod:`.convert` turns a request
into what the serving core takes, :mod:`.events` writes the stream, :mod:`.errors` the
error envelope, :mod:`.service` runs a request and :mod:`.routes` are the handlers.
"""
