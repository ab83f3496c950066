"""Client JSON schemas (a tool's ``parameters``, ``response_format``'s schema): which ones
the server accepts, and the one way they are ever validated against.

A schema from a request is data, never a pointer to somewhere else. jsonschema's default
resolver fetches ``http://`` and ``file://`` references, so a schema could make the
server request a URL or read a local file and quote it back in an error. Here:

- only references inside the schema itself (``#``, ``#/$defs/...``, ``#anchor``) are
  accepted, and each must point at something; ``$id`` may not move the base URI
  elsewhere and ``$schema`` must name a dialect jsonschema ships with. Anything else is
  a 400 naming the parameter, before any generation;
- validation always uses a :class:`referencing.Registry` whose retrieve function
  refuses every URI, so a path these checks did not think of still fetches nothing;
- size is bounded (:data:`MAX_SCHEMA_DEPTH`, :data:`MAX_SCHEMA_NODES`) and a schema
  that refers to itself without nesting (``{"$ref": "#"}``, ``$defs`` that refer to
  each other in a loop) is refused: no grammar can express it and a validator would
  recurse forever. Recursion through a property or an item (a tree) is accepted.

Every walk here is iterative, so a deeply nested schema cannot exhaust the stack.
jsonschema and referencing are imported by the functions that use them, when the first
schema arrives: a server that is never sent one does not load them (about 2 MiB and a
good share of the start-up time; README, "What the server loads").
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from functools import cache, lru_cache
from typing import TYPE_CHECKING, Any

from ..errors import InvalidRequestError

if TYPE_CHECKING:
    import jsonschema.protocols
    import referencing

# Nesting of JSON objects and arrays in one schema document. A property nested in a
# property costs two levels ({"properties": {"name": {...}}}), so this allows 15 levels
# of nested objects: OpenAI's structured outputs allow 10. Deeper schemas gain nothing
# for a small model and every consumer (jsonschema, the grammar converter) recurses on
# them.
MAX_SCHEMA_DEPTH = 32
# JSON values (objects, arrays, strings, numbers, ...) in all the schemas of one
# request together (tools and response_format). A tool with ten properties takes
# about 40. The grammar is built from them on every request, so they must stay cheap.
MAX_SCHEMA_NODES = 4096

REFERENCE_KEYWORDS = ("$ref", "$dynamicRef", "$recursiveRef")

# Schemas (by JSON text) that passed the checks jsonschema runs: an application sends the
# same ones with every request, and checking one against its dialect's metaschema takes
# 1-3 ms on the event loop (for three fields), far more than the rest of the checks.
ACCEPTED_CACHE_SIZE = 128

# Keywords whose schemas apply to the same instance as the schema holding them: a cycle
# through these (and references) never reaches a smaller part of the instance.
_IN_PLACE_ONE = ("not", "if", "then", "else")
_IN_PLACE_LIST = ("allOf", "anyOf", "oneOf")
_IN_PLACE_MAP = ("dependentSchemas", "dependencies")
# Keywords whose schemas apply to a part of the instance (or to nothing by themselves).
_NESTED_ONE = (
    "items",
    "additionalItems",
    "additionalProperties",
    "contains",
    "propertyNames",
    "unevaluatedItems",
    "unevaluatedProperties",
)
_NESTED_LIST = ("items", "prefixItems")
_NESTED_MAP = ("properties", "patternProperties", "$defs", "definitions")


def _refuse_retrieval(uri: str) -> referencing.Resource[Any]:
    import referencing.exceptions

    raise referencing.exceptions.NoSuchResource(ref=uri)  # type: ignore[call-arg]


@cache
def no_retrieval() -> referencing.Registry[Any]:
    """The only registry client schemas are ever resolved in: it can retrieve nothing."""
    import referencing

    # referencing's attrs classes take these keywords; mypy cannot see through them.
    return referencing.Registry(retrieve=_refuse_retrieval)  # type: ignore[call-arg]


def validator(schema: dict[str, Any]) -> jsonschema.protocols.Validator:
    """A validator for a checked client schema that cannot fetch anything."""
    import jsonschema.validators

    validator_class = jsonschema.validators.validator_for(schema)
    return validator_class(schema, registry=no_retrieval())


def check_client_schema(schema: Any, param: str) -> int:
    """Refuse what a client schema may not be (400 naming ``param``); return its size in
    JSON values, which the caller adds up over the request."""
    if not isinstance(schema, dict):
        raise InvalidRequestError(f"Invalid schema for '{param}': must be an object.", param=param)
    import jsonschema.validators

    validator_class = _dialect(schema, param)
    legacy_id = validator_class in (
        jsonschema.validators.Draft3Validator,
        jsonschema.validators.Draft4Validator,
    )
    nodes = _check_shape(schema, param, legacy_id=legacy_id)
    # Checked for its shape, so bounded: its text is a fair key.
    _check_dialect_and_references(json.dumps(schema), validator_class, param)
    return nodes


@lru_cache(maxsize=ACCEPTED_CACHE_SIZE)
def _check_dialect_and_references(
    schema_text: str, validator_class: type[jsonschema.protocols.Validator], param: str
) -> None:
    """The schema (as JSON text) against its dialect's metaschema, and its references;
    kept for the schemas that pass (one that fails raises, and no exception is kept)."""
    import jsonschema.exceptions

    schema = json.loads(schema_text)
    try:
        validator_class.check_schema(schema)
    except jsonschema.exceptions.SchemaError as exc:
        where = "/".join(str(part) for part in exc.path)
        raise _invalid(param, exc.message + (f" (at {where})" if where else "")) from None
    _check_references(schema, param)


def check_total_size(total_nodes: int, param: str) -> None:
    if total_nodes > MAX_SCHEMA_NODES:
        raise _invalid(
            param,
            f"the schemas of this request are too large ({total_nodes} JSON values; "
            f"at most {MAX_SCHEMA_NODES} in all)",
        )


def _invalid(param: str, what: str) -> InvalidRequestError:
    return InvalidRequestError(
        f"Invalid schema for '{param}': {what}.", param=param, code="invalid_schema"
    )


def _quoted(value: str) -> str:
    return repr(value if len(value) <= 80 else value[:77] + "...")


def _check_shape(schema: dict[str, Any], param: str, *, legacy_id: bool) -> int:
    """Depth, size, and the keywords that could point outside the schema; every object
    in the document is looked at, wherever it is (in ``const`` data too: refusing a
    reference there costs nothing, missing one in a subschema would)."""
    nodes = 0
    stack: list[tuple[Any, int]] = [(schema, 1)]
    while stack:
        node, depth = stack.pop()
        nodes += 1
        if nodes > MAX_SCHEMA_NODES:
            raise _invalid(param, f"the schema is too large (more than {MAX_SCHEMA_NODES} values)")
        if isinstance(node, dict):
            if depth > MAX_SCHEMA_DEPTH:
                raise _invalid(param, f"the schema is nested too deeply (over {MAX_SCHEMA_DEPTH})")
            _check_keywords(node, param, legacy_id=legacy_id)
            stack.extend((value, depth + 1) for value in node.values())
        elif isinstance(node, list):
            if depth > MAX_SCHEMA_DEPTH:
                raise _invalid(param, f"the schema is nested too deeply (over {MAX_SCHEMA_DEPTH})")
            stack.extend((value, depth + 1) for value in node)
    return nodes


def _check_keywords(node: dict[str, Any], param: str, *, legacy_id: bool) -> None:
    for keyword in REFERENCE_KEYWORDS:
        reference = node.get(keyword)
        if isinstance(reference, str) and not reference.startswith("#"):
            raise _invalid(
                param,
                f"{keyword} {_quoted(reference)} points outside the schema; only references "
                "within it (such as '#/$defs/name') are allowed",
            )
    # "id" is drafts 3 and 4's $id; in later drafts it is an ordinary word.
    for keyword in ("$id", "id") if legacy_id else ("$id",):
        identifier = node.get(keyword)
        # A plain fragment ("#name", an anchor in drafts 6 and 7) keeps the base URI;
        # anything else would make later references resolve against another document.
        if isinstance(identifier, str) and not identifier.startswith("#"):
            raise _invalid(
                param,
                f"{keyword} {_quoted(identifier)} is not allowed: a schema may not "
                "change the base URI of its references",
            )
    if "$schema" in node:
        _check_dialect(node["$schema"], param)


def _check_dialect(dialect: Any, param: str) -> None:
    """Only the dialects jsonschema ships (and resolves locally) are accepted: an
    unknown one could name a metaschema to fetch."""
    if not isinstance(dialect, str):
        raise _invalid(param, "$schema must be a string")
    import referencing.jsonschema

    try:
        referencing.jsonschema.specification_with(dialect)
    except referencing.jsonschema.UnknownDialect:
        raise _invalid(
            param, f"$schema {_quoted(dialect)} is not a JSON Schema dialect this server knows"
        ) from None


def _dialect(schema: dict[str, Any], param: str) -> type[jsonschema.protocols.Validator]:
    import jsonschema.exceptions
    import jsonschema.validators

    if "$schema" in schema:
        _check_dialect(schema["$schema"], param)
    try:
        validator_class: type[jsonschema.protocols.Validator] = jsonschema.validators.validator_for(
            schema
        )
    except jsonschema.exceptions.UnknownType as exc:  # pragma: no cover - defensive
        raise _invalid(param, str(exc)) from None
    return validator_class


# ---- references: each must resolve inside the schema, and none may loop in place -------


def _subschemas(node: dict[str, Any]) -> Iterator[tuple[Any, bool]]:
    """The schemas directly inside ``node``, each with whether it applies to the same
    instance as ``node`` (True) or to a part of it / to nothing by itself (False)."""
    for keyword in _IN_PLACE_ONE:
        if keyword in node:
            yield node[keyword], True
    for keyword in _IN_PLACE_LIST:
        if isinstance(node.get(keyword), list):
            yield from ((child, True) for child in node[keyword])
    for keyword in _IN_PLACE_MAP:
        if isinstance(node.get(keyword), dict):
            yield from ((child, True) for child in node[keyword].values())
    for keyword in _NESTED_ONE:
        if isinstance(node.get(keyword), dict):
            yield node[keyword], False
    for keyword in _NESTED_LIST:
        if isinstance(node.get(keyword), list):
            yield from ((child, False) for child in node[keyword])
    for keyword in _NESTED_MAP:
        if isinstance(node.get(keyword), dict):
            yield from ((child, False) for child in node[keyword].values())


def _check_references(schema: dict[str, Any], param: str) -> None:
    import referencing.exceptions
    import referencing.jsonschema

    specification = referencing.jsonschema.specification_with(
        schema.get("$schema", ""), default=referencing.jsonschema.DRAFT202012
    )
    resolver = no_retrieval().resolver_with_root(specification.create_resource(schema))
    # Every subschema, with the schemas that apply to the same instance as it does.
    in_place: dict[int, list[dict[str, Any]]] = {}
    stack: list[Any] = [schema]
    while stack:
        node = stack.pop()
        if not isinstance(node, dict) or id(node) in in_place:
            continue
        same_instance: list[dict[str, Any]] = []
        for child, applies_in_place in _subschemas(node):
            if applies_in_place and isinstance(child, dict):
                same_instance.append(child)
            stack.append(child)
        for keyword in REFERENCE_KEYWORDS:
            reference = node.get(keyword)
            if not isinstance(reference, str):
                continue
            try:
                target = resolver.lookup(reference).contents
            except referencing.exceptions.Unresolvable:
                raise _invalid(
                    param, f"{keyword} {_quoted(reference)} does not point into the schema"
                ) from None
            if isinstance(target, dict):
                same_instance.append(target)
                stack.append(target)
        in_place[id(node)] = same_instance
    _refuse_in_place_cycles(schema, in_place, param)


def _refuse_in_place_cycles(
    schema: dict[str, Any], in_place: dict[int, list[dict[str, Any]]], param: str
) -> None:
    """A schema that reaches itself through references and in-place keywords only
    (``{"$ref": "#"}``; ``a`` -> ``b`` -> ``a`` in ``$defs``) describes no finite check."""
    done: set[int] = set()
    for start in in_place:
        if start in done:
            continue
        on_path: set[int] = {start}
        path: list[tuple[int, Iterator[dict[str, Any]]]] = [(start, iter(in_place[start]))]
        while path:
            node, children = path[-1]
            child = next(children, None)
            if child is None:
                path.pop()
                on_path.discard(node)
                done.add(node)
                continue
            key = id(child)
            if key in on_path:
                raise _invalid(
                    param,
                    "the schema refers to itself without nesting (a $ref loop that never "
                    "reaches a property or an item), which no output can satisfy",
                )
            if key not in done and key in in_place:
                on_path.add(key)
                path.append((key, iter(in_place[key])))
