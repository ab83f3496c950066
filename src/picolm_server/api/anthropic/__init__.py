"""Anthropic's Messages API (``POST /v1/messages``, ``POST /v1/messages/count_tokens``).

:mod:`.types` holds the request and response shapes, :mod:`.convert` turns a request
into the generation core's spec, :mod:`.reply` builds a whole message, :mod:`.events`
writes the stream, :mod:`.respond` turns the core's events into either, :mod:`.errors`
words validation errors as Anthropic does and :mod:`.routes` are the handlers. The
error envelope on these paths is http/errors.py's.
"""
