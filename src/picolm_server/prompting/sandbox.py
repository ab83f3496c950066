"""The Jinja sandbox chat templates run in, with bounds on what one render may build.

Jinja's own sandbox stops a template from reaching Python internals, but not from
building huge values: ``'a' * 10**9`` or a loop doubling a string takes gigabytes
before anything can notice. A GGUF file's template is data from wherever the model
came from, so every render here is bounded:

- a string or list built by ``*``, ``+``, ``~``, ``%``, ``**`` or by a growing string
  method or filter (``center``, ``ljust``, ``rjust``, ``zfill``, ``expandtabs``,
  ``replace``, ``join``, ``format``, ``indent``) holds at most
  :data:`MAX_TEMPLATE_VALUE` characters or items, checked *before* it is built;
- ``range()`` yields at most :data:`MAX_TEMPLATE_RANGE` numbers;
- the rendered text is at most :data:`MAX_TEMPLATE_OUTPUT` characters; rendering stops
  as soon as it is longer.

Going over any of them raises :class:`TemplateLimitError`.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment

# One string or list a template builds. Templates join message text with their markers
# (`'<|user|>' + content`), so a value must hold the largest message a request body can
# carry: the same bound as the whole prompt, far from the gigabytes a hostile template
# would ask for.
MAX_TEMPLATE_VALUE = 16 * 1024 * 1024
# Numbers in one range(): templates loop over messages and tools, never over 10,000
# anything (Jinja's own sandbox allows 100,000).
MAX_TEMPLATE_RANGE = 10_000
# Characters in one rendered prompt: four times the default request body limit (4 MiB);
# a prompt this long is far beyond any context a small model has.
MAX_TEMPLATE_OUTPUT = 16 * 1024 * 1024
# An exponent larger than this on a base other than 0, 1 or -1 makes a number of
# thousands of digits: no template needs one.
MAX_TEMPLATE_EXPONENT = 1024


class TemplateLimitError(Exception):
    """A template went over one of the render bounds."""


def _too_big(what: str, size: int) -> TemplateLimitError:
    return TemplateLimitError(
        f"the chat template tried to build {what} of {size} items "
        f"(at most {MAX_TEMPLATE_VALUE} are allowed)"
    )


def _check_size(size: int, what: str = "a value") -> None:
    if size > MAX_TEMPLATE_VALUE:
        raise _too_big(what, size)


def _sized(value: Any) -> int | None:
    return len(value) if isinstance(value, (str, list, tuple)) else None


def _bounded_range(*args: int) -> range:
    numbers = range(*args)
    if len(numbers) > MAX_TEMPLATE_RANGE:
        raise TemplateLimitError(
            f"the chat template asked for a range of {len(numbers)} numbers "
            f"(at most {MAX_TEMPLATE_RANGE} are allowed)"
        )
    return numbers


# %-style conversions: flags, width, precision.
_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d+))?")


def _check_percent_format(template: str) -> None:
    for width, precision in _PERCENT_SPEC.findall(template):
        for number in (width, precision):
            if number == "*":
                raise TemplateLimitError("the chat template used a '*' width in a % format")
            if number:
                _check_size(int(number), "a formatted field")


def _check_brace_format(template: str) -> None:
    try:
        fields = list(string.Formatter().parse(template))
    except ValueError:
        return  # str.format raises its own error for a malformed format
    for _literal, _name, spec, _conversion in fields:
        for number in re.findall(r"\d+", spec or ""):
            _check_size(int(number), "a formatted field")


def _check_binop(operator_name: str, left: Any, right: Any) -> None:
    if operator_name == "*":
        for sequence, count in ((left, right), (right, left)):
            size = _sized(sequence)
            if size is not None and isinstance(count, int):
                _check_size(size * max(count, 0), "a repeated sequence")
    elif operator_name == "+":
        left_size, right_size = _sized(left), _sized(right)
        if left_size is not None and right_size is not None:
            _check_size(left_size + right_size, "a joined sequence")
    elif operator_name == "**":
        big_base = isinstance(left, int) and abs(left) > 1
        if big_base and isinstance(right, int) and right > MAX_TEMPLATE_EXPONENT:
            raise TemplateLimitError(
                f"the chat template raised a number to the power {right} "
                f"(at most {MAX_TEMPLATE_EXPONENT} is allowed)"
            )
    elif operator_name == "%" and isinstance(left, str):
        _check_percent_format(left)


def _join_size(separator: str, items: list[Any]) -> int:
    return len(separator) * max(len(items) - 1, 0) + sum(len(str(item)) for item in items)


def _check_string_method(method: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
    """Before a str method that can make a much longer string runs."""
    text: str = method.__self__
    name = method.__name__
    if name in ("center", "ljust", "rjust", "zfill"):
        width = args[0] if args else kwargs.get("width", 0)
        if isinstance(width, int):
            _check_size(width, "a padded string")
    elif name == "expandtabs":
        tabsize = args[0] if args else kwargs.get("tabsize", 8)
        if isinstance(tabsize, int):
            _check_size(len(text) + text.count("\t") * max(tabsize, 0), "an expanded string")
    elif name == "replace" and len(args) >= 2:
        old, new = args[0], args[1]
        if isinstance(old, str) and isinstance(new, str):
            count = text.count(old) if old else len(text) + 1
            _check_size(len(text) + count * max(len(new) - len(old), 0), "a replaced string")
    elif name == "format":
        _check_brace_format(text)


class _BoundedCodeGenerator(CodeGenerator):
    """Compiles ``a ~ b`` to a checked join (Jinja offers no hook for ``~``)."""

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.bounded_concat((")
        for argument in node.nodes:
            self.visit(argument, frame)
            self.write(", ")
        self.write("))")


class BoundedSandbox(ImmutableSandboxedEnvironment):
    """An immutable Jinja sandbox whose renders cannot build huge values."""

    code_generator_class = _BoundedCodeGenerator
    intercepted_binops = frozenset({"*", "+", "**", "%"})

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.globals["range"] = _bounded_range
        self.filters["center"] = self._wrap_filter(self.filters["center"], self._check_center)
        self.filters["indent"] = self._wrap_filter(self.filters["indent"], self._check_indent)
        self.filters["replace"] = self._wrap_filter(self.filters["replace"], self._check_replace)
        self.filters["format"] = self._wrap_filter(self.filters["format"], self._check_format)
        self.filters["join"] = _bounded_join

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        _check_binop(operator, left, right)
        return super().call_binop(context, operator, left, right)

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(getattr(__obj, "__self__", None), str):
            _check_string_method(__obj, args, kwargs)
            if __obj.__name__ == "join" and args:
                items = list(args[0])
                _check_size(_join_size(__obj.__self__, items), "a joined string")
                args = (items, *args[1:])
        return super().call(__context, __obj, *args, **kwargs)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        _check_brace_format(value.__self__)
        return wrapped

    @staticmethod
    def bounded_concat(values: Iterable[Any]) -> str:
        texts = [str(value) for value in values]
        _check_size(sum(len(text) for text in texts), "a joined string")
        return "".join(texts)

    # -- filters that can grow a string --

    @staticmethod
    def _wrap_filter(
        original: Callable[..., Any], check: Callable[..., None]
    ) -> Callable[..., Any]:
        def bounded(*args: Any, **kwargs: Any) -> Any:
            check(*args, **kwargs)
            return original(*args, **kwargs)

        # Keep Jinja's pass_context / pass_environment marks on the original filter.
        for mark in ("jinja_pass_arg",):
            if hasattr(original, mark):
                setattr(bounded, mark, getattr(original, mark))
        return bounded

    @staticmethod
    def _check_center(value: Any, width: int = 80) -> None:
        if isinstance(width, int):
            _check_size(width, "a padded string")

    @staticmethod
    def _check_indent(value: Any, width: Any = 4, *args: Any, **kwargs: Any) -> None:
        padding = len(width) if isinstance(width, str) else width
        if isinstance(padding, int):
            lines = str(value).count("\n") + 1
            _check_size(len(str(value)) + lines * max(padding, 0), "an indented string")

    @staticmethod
    def _check_replace(context: Any, value: Any, old: Any, new: Any, *args: Any) -> None:
        if isinstance(value, str) and isinstance(old, str) and isinstance(new, str):
            count = value.count(old) if old else len(value) + 1
            _check_size(len(value) + count * max(len(new) - len(old), 0), "a replaced string")

    @staticmethod
    def _check_format(value: Any, *args: Any, **kwargs: Any) -> None:
        if isinstance(value, str):
            _check_percent_format(value)


@jinja2.pass_eval_context
def _bounded_join(
    eval_context: Any, value: Iterable[Any], d: str = "", attribute: Any = None
) -> Any:
    from jinja2.filters import sync_do_join

    items = list(value)
    _check_size(_join_size(str(d), items), "a joined string")
    return sync_do_join(eval_context, items, d, attribute)


def render_bounded(template: jinja2.Template, context: Mapping[str, Any]) -> str:
    """Render ``template``, stopping as soon as the text is over :data:`MAX_TEMPLATE_OUTPUT`."""
    pieces: list[str] = []
    length = 0
    stream: Iterator[str] = template.generate(**context)
    for piece in stream:
        length += len(piece)
        if length > MAX_TEMPLATE_OUTPUT:
            raise TemplateLimitError(
                f"the chat template rendered more than {MAX_TEMPLATE_OUTPUT} characters"
            )
        pieces.append(piece)
    return "".join(pieces)


__all__ = [
    "MAX_TEMPLATE_EXPONENT",
    "MAX_TEMPLATE_OUTPUT",
    "MAX_TEMPLATE_RANGE",
    "MAX_TEMPLATE_VALUE",
    "BoundedSandbox",
    "TemplateLimitError",
    "render_bounded",
]
