"""Anthropic's Messages API (``POST /v1/messages``, ``POST /v1/messages/count_tokens``).

:mod:`.types` holds the request and response shapes, :mod:`.convert` turns a request
into the generation core's spec, :mod:`.reply` builds a whole message, :mod:`.events`
writes the stream, :mod:`.respond` turns the core's events into either, :mod:`.errors`
owns the error envelope on these paths (:mod:`.envelope` puts every error answer there
in it) and :mod:`.routes` are the handlers.
"""
