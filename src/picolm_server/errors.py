"""OpenAI-style API errors: one exception type per failure, each knowing its HTTP status.

Every error the server returns is the OpenAI envelope
``{"error": {"message", "type", "param", "code"}}``; the exception classes here carry
exactly those four fields plus the status, so routes and middleware never build error
bodies by hand.
"""

from __future__ import annotations

from typing import Any


class APIError(Exception):
    """An error that is reported to the client in OpenAI's error envelope."""

    status_code: int = 500
    error_type: str = "server_error"
    default_code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code
        self.headers = headers or {}

    def to_dict(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            }
        }


class InvalidRequestError(APIError):
    """400: malformed JSON or an invalid parameter (``param`` names the field)."""

    status_code = 400
    error_type = "invalid_request_error"


class ContextLengthExceededError(InvalidRequestError):
    """400: the prompt (plus what must be generated) does not fit the context.

    Engines raise it with :meth:`prompt` (the counts, worded for chat's ``messages``);
    the generation core names the field the prompt came from with :meth:`for_field`.
    """

    default_code = "context_length_exceeded"
    # Set by :meth:`prompt`: the counts the message is made of.
    prompt_tokens: int | None = None
    context_length: int = 0
    at_least: bool = False

    @classmethod
    def prompt(
        cls,
        prompt_tokens: int,
        context_length: int,
        *,
        at_least: bool = False,
        field: str = "messages",
    ) -> ContextLengthExceededError:
        count = f"at least {prompt_tokens}" if at_least else str(prompt_tokens)
        error = cls(
            f"This model's maximum context length is {context_length} tokens. However, your "
            f"{field} resulted in {count} tokens. Please reduce the length of the {field}.",
            param=field,
        )
        error.prompt_tokens = prompt_tokens
        error.context_length = context_length
        error.at_least = at_least
        return error

    def for_field(self, field: str) -> ContextLengthExceededError:
        """The same refusal naming ``field`` (``input``, ``prompt``): itself when it
        already does, or when it is not a prompt's refusal."""
        if self.prompt_tokens is None or self.param == field:
            return self
        return self.prompt(
            self.prompt_tokens, self.context_length, at_least=self.at_least, field=field
        )


class AuthenticationError(APIError):
    """401: a missing or wrong API key."""

    status_code = 401
    error_type = "invalid_request_error"
    default_code = "invalid_api_key"


class NotFoundError(APIError):
    """404: an unknown route or model."""

    status_code = 404
    error_type = "invalid_request_error"


class ModelNotFoundError(NotFoundError):
    default_code = "model_not_found"

    def __init__(self, model: str) -> None:
        super().__init__(
            f"The model `{model}` does not exist or you do not have access to it.",
            param="model",
        )
        self.model = model  # as the request named it (Ollama's wording quotes it)


class MethodNotAllowedError(APIError):
    status_code = 405
    error_type = "invalid_request_error"


class RequestTooLargeError(APIError):
    """413: the request body is over ``server.max_body``."""

    status_code = 413
    error_type = "invalid_request_error"
    default_code = "request_too_large"


class QueueFullError(APIError):
    """429: every generation slot is busy and the wait queue is full."""

    status_code = 429
    error_type = "rate_limit_error"
    default_code = "rate_limit_exceeded"


class EngineError(APIError):
    """500: the engine failed (crashed, exited non-zero, produced nothing usable)."""

    status_code = 500
    error_type = "server_error"
    default_code = "engine_error"


class EngineTimeoutError(APIError):
    """504: the generation ran past its time limit."""

    status_code = 504
    error_type = "timeout_error"
    default_code = "timeout"


class RequestTimeoutError(APIError):
    """408: the request body did not arrive within ``server.body_timeout``."""

    status_code = 408
    error_type = "invalid_request_error"
    default_code = "request_timeout"


class ServerShuttingDownError(APIError):
    """503: the server is stopping; a request it can no longer finish, or a new one."""

    status_code = 503
    error_type = "server_error"
    default_code = "server_shutting_down"


class TooManyConnectionsError(APIError):
    """503: more connections are open than ``server.max_connections``."""

    status_code = 503
    error_type = "server_error"
    default_code = "too_many_connections"


class EngineCannotError(InvalidRequestError):
    """400: the request needs something the serving engine cannot do (embeddings on
    PicoLM, top_k where sampling has no such cut): ``param`` names what asked for it."""

    default_code = "unsupported_by_engine"


class EmbeddingsUnsupportedError(EngineCannotError):
    """400: the engine cannot compute embeddings."""

    default_code = "embeddings_not_supported"

    def __init__(self, engine: str, *, param: str | None = "model") -> None:
        super().__init__(
            f"The {engine} engine cannot compute embeddings: serve the model with the "
            "llama.cpp engine to use /v1/embeddings.",
            param=param,
        )


class ModelLoadFailedError(APIError):
    """500: a model on the shelf failed to load; the message names it and the cause."""

    status_code = 500
    error_type = "server_error"
    default_code = "model_load_failed"

    def __init__(self, model: str, cause: str) -> None:
        super().__init__(f"The model `{model}` failed to load: {cause}", param="model")
        self.model = model


class InsufficientMemoryError(APIError):
    """503: a model needs more memory than the shelf's budget, even alone."""

    status_code = 503
    error_type = "server_error"
    default_code = "insufficient_memory"

    def __init__(self, model: str, needed_bytes: int, budget_bytes: int) -> None:
        super().__init__(
            f"The model `{model}` needs {needed_bytes} bytes of memory, more than the "
            f"loaded-memory budget of {budget_bytes} bytes (max_loaded_memory).",
            param="model",
        )
        self.model = model
        self.needed_bytes = needed_bytes
        self.budget_bytes = budget_bytes


class ForbiddenError(APIError):
    """403: the client may not do this (model administration it is not allowed, a
    download from an address it may not fetch)."""

    status_code = 403
    error_type = "permission_error"
    default_code = "forbidden"


class ModelBusyError(APIError):
    """409: the model is in use by requests and cannot be removed now."""

    status_code = 409
    error_type = "invalid_request_error"
    default_code = "model_busy"


class PullFailedError(APIError):
    """502: a model download failed (the remote server, the connection, the file)."""

    status_code = 502
    error_type = "server_error"
    default_code = "pull_failed"


class InsufficientStorageError(APIError):
    """507: a model download would leave less free disk space than the reserve."""

    status_code = 507
    error_type = "server_error"
    default_code = "insufficient_storage"
