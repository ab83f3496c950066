"""Every wire API's routes, in one list the app includes (one block per API).

Each API is declared here by path and handler name, and its module (request and
response models, conversion, events) is imported with the first request to one of its
paths: a server pays in memory and start-up time only for the APIs its clients use
(about 4 MiB of idle memory for all of them; docs/benchmarks.md).
``tests/api/test_registry.py`` checks that these declarations match the routes each
module declares itself.
"""

from __future__ import annotations

from ..http.route_table import LazyRoutes

_PACKAGE = __name__.rpartition(".")[0]

chat_routes = LazyRoutes(f"{_PACKAGE}.chat.routes")
chat_routes.post("/v1/chat/completions", "create_chat_completion")

responses_routes = LazyRoutes(f"{_PACKAGE}.responses.routes")
responses_routes.post("/v1/responses", "create_response")
responses_routes.get("/v1/responses/{response_id}", "retrieve_response")
responses_routes.delete("/v1/responses/{response_id}", "delete_response")
responses_routes.get("/v1/responses/{response_id}/input_items", "list_input_items")

anthropic_routes = LazyRoutes(f"{_PACKAGE}.anthropic.routes")
anthropic_routes.post("/v1/messages", "create_message")
anthropic_routes.post("/v1/messages/count_tokens", "count_tokens")

completions_routes = LazyRoutes(f"{_PACKAGE}.completions.routes")
completions_routes.post("/v1/completions", "create_completion")

embeddings_routes = LazyRoutes(f"{_PACKAGE}.embeddings.routes")
embeddings_routes.post("/v1/embeddings", "create_embeddings")

ollama_routes = LazyRoutes(f"{_PACKAGE}.ollama.routes")
ollama_routes.get("/api/version", "version")
ollama_routes.get("/api/tags", "list_models")
ollama_routes.post("/api/show", "show_model")
ollama_routes.get("/api/ps", "running_models")
ollama_routes.post("/api/chat", "chat")
ollama_routes.post("/api/generate", "generate")
ollama_routes.post("/api/embed", "embed")
ollama_routes.post("/api/embeddings", "embeddings")

tokenize_routes = LazyRoutes(f"{_PACKAGE}.tokenize")
tokenize_routes.post("/tokenize", "tokenize")
tokenize_routes.post("/detokenize", "detokenize")

# Ollama's model administration (pull, copy, delete): who may call it is
# server.model_admin.
ollama_admin_routes = LazyRoutes(f"{_PACKAGE}.ollama.admin")
ollama_admin_routes.post("/api/copy", "copy_model")
ollama_admin_routes.delete("/api/delete", "delete_model")
ollama_admin_routes.post("/api/pull", "pull_model")

ROUTERS: tuple[LazyRoutes, ...] = (
    chat_routes,
    responses_routes,
    anthropic_routes,
    completions_routes,
    embeddings_routes,
    ollama_routes,
    tokenize_routes,
    ollama_admin_routes,
)
