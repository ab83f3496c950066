"""The wire APIs: one package per API, each a thin adapter over the generation core
(request types and conversion in, core events to its own shapes out, its own error
envelope). :mod:`.routers` lists their routers for the app."""
