"""The bounded Jinja sandbox (picolm_server.prompting.sandbox): each way a template can
build a huge value is stopped before the value exists; ordinary templates are unchanged."""

from __future__ import annotations

import pytest

from picolm_server.prompting.sandbox import (
    MAX_TEMPLATE_OUTPUT,
    MAX_TEMPLATE_RANGE,
    MAX_TEMPLATE_VALUE,
    BoundedSandbox,
    TemplateLimitError,
    render_bounded,
)


def render(source: str, **context: object) -> str:
    env = BoundedSandbox(trim_blocks=True, lstrip_blocks=True)
    return render_bounded(env.from_string(source), context)


@pytest.mark.parametrize(
    "source",
    [
        "{{ 'a' * 10**9 }}",
        "{{ 10**9 * 'a' }}",
        "{{ [0] * 10**9 }}",
        "{{ range(10**9)|list|length }}",
        f"{{{{ range({MAX_TEMPLATE_RANGE + 1})|length }}}}",
        # Doubling a string in a loop, with ~ and with +.
        "{% set ns = namespace(s='a' * 1000) %}{% for i in range(40) %}"
        "{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}",
        "{% set ns = namespace(s='a' * 1000) %}{% for i in range(40) %}"
        "{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s|length }}",
        "{{ 'a'.center(10**9) }}",
        "{{ 'a'.ljust(10**9) }}",
        "{{ '1'.zfill(10**9) }}",
        "{{ ('\\t' * 1000).expandtabs(10**6) }}",
        "{{ ('a' * 1000).replace('a', 'b' * 20000) }}",
        "{{ 'a'|center(10**9) }}",
        "{{ 'x'|indent(10**9) }}",
        "{{ ('a' * 1000).replace('a', 'b' * 20000) }}",
        "{{ range(10000)|join('a' * 2000) }}",
        "{{ ('a' * 2000).join(range(10000)|map('string')) }}",
        "{{ '%0999999999d' % 1 }}",
        "{{ '%*d' % (10**9, 1) }}",
        "{{ '%0999999999d'|format(1) }}",
        "{{ '{:>999999999}'.format(1) }}",
        "{{ 2 ** 100000 }}",
        # Output: many small pieces, none of them big.
        "{% for i in range(10000) %}{% for j in range(10000) %}{{ 'aaaaaaaaaa' }}"
        "{% endfor %}{% endfor %}",
    ],
)
def test_huge_values_are_refused(source: str) -> None:
    with pytest.raises(TemplateLimitError):
        render(source)


def test_limits_are_what_they_say() -> None:
    assert len(render("{{ 'a' * n }}", n=MAX_TEMPLATE_VALUE)) == MAX_TEMPLATE_VALUE
    with pytest.raises(TemplateLimitError, match=f"at most {MAX_TEMPLATE_VALUE}"):
        render("{{ 'a' * n }}", n=MAX_TEMPLATE_VALUE + 1)
    assert render("{{ range(n)|length }}", n=MAX_TEMPLATE_RANGE) == str(MAX_TEMPLATE_RANGE)
    text = "a" * (MAX_TEMPLATE_OUTPUT // 2)
    assert len(render("{{ t }}{{ t }}", t=text)) == MAX_TEMPLATE_OUTPUT
    with pytest.raises(TemplateLimitError, match="rendered more than"):
        render("{{ t }}{{ t }}!", t=text)


def test_ordinary_templates_render_as_before() -> None:
    source = (
        "{{ 'a' ~ 'b' }}|{{ 'x,y'|replace(',', ';') }}|{{ '%5s|%-3d' % ('a', 2) }}|"
        "{{ ['a', 'b']|join(', ') }}|{{ 'a'.center(5) }}|{{ '{:>4}'.format(1) }}|"
        "{{ '=' * 3 }}|{{ [1] + [2] }}|{{ 2 ** 10 }}|{{ 'l1\nl2'|indent(2) }}|"
        "{{ '%s-%s'|format('a', 'b') }}|{{ 'ab'.replace('a', 'c') }}"
    )
    assert render(source) == ("ab|x;y|    a|2  |a, b|  a  |   1|===|[1, 2]|1024|l1\n  l2|a-b|cb")
