"""The completion request reduced to the core's spec, and the refusals, without HTTP."""

from __future__ import annotations

from typing import Any

import pytest

from picolm_server.api.completions.convert import (
    DEFAULT_MAX_TOKENS,
    FimMarkers,
    completion_spec,
    engine_prompt,
    max_tokens,
    prompt_text,
    refuse_unsupported,
    stop_strings,
)
from picolm_server.api.completions.types import CompletionRequest
from picolm_server.errors import InvalidRequestError
from picolm_server.generation import RawPrompt

FIM = FimMarkers("<fim_prefix>", "<fim_suffix>", "<fim_middle>")


def request(**fields: Any) -> CompletionRequest:
    return CompletionRequest.model_validate({"model": "m", "prompt": "Once", **fields})


def refusal(**fields: Any) -> InvalidRequestError:
    with pytest.raises(InvalidRequestError) as caught:
        parsed = request(**fields)
        refuse_unsupported(parsed)
        engine_prompt(parsed, prompt_text(parsed), None)
    return caught.value


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"n": 2}, "n"),
        ({"best_of": 3}, "best_of"),
        ({"best_of": 0}, "best_of"),
        ({"logprobs": 0}, "logprobs"),
        ({"logprobs": 5}, "logprobs"),
        ({"echo": True, "suffix": "x"}, "echo"),
        ({"suffix": "return x"}, "suffix"),
        ({"prompt": ["a", "b"]}, "prompt"),
        ({"prompt": []}, "prompt"),
        ({"prompt": [1, 2, 3]}, "prompt"),
        ({"prompt": [[1, 2], [3]]}, "prompt"),
        ({"prompt": None}, "prompt"),
        ({"prompt": ""}, "prompt"),
    ],
)
def test_refusals_name_the_parameter(fields: dict[str, Any], param: str) -> None:
    error = refusal(**fields)
    assert error.param == param
    assert error.status_code == 400


def test_accepted_parameters_that_change_nothing_here() -> None:
    parsed = request(n=1, best_of=1, user="u", presence_penalty=0.5, logit_bias={"1": 2})
    refuse_unsupported(parsed)
    assert prompt_text(parsed) == "Once"


def test_a_list_of_one_prompt_is_that_prompt() -> None:
    assert prompt_text(request(prompt=["Once upon"])) == "Once upon"


def test_suffix_writes_the_fill_in_the_middle_prompt() -> None:
    parsed = request(prompt="def add(a, b):\n", suffix="\n    return c\n")
    assert engine_prompt(parsed, prompt_text(parsed), FIM) == (
        "<fim_prefix>def add(a, b):\n<fim_suffix>\n    return c\n<fim_middle>"
    )


def test_an_empty_prefix_is_fine_when_there_is_a_suffix() -> None:
    parsed = request(prompt="", suffix="end")
    assert engine_prompt(parsed, "", FIM) == "<fim_prefix><fim_suffix>end<fim_middle>"


def test_max_tokens_defaults_to_openais_16() -> None:
    assert max_tokens(request()) == DEFAULT_MAX_TOKENS == 16
    assert max_tokens(request(max_tokens=0)) == 0
    assert max_tokens(request(max_tokens=100)) == 100


def test_stop_strings() -> None:
    assert stop_strings(request()) == ()
    assert stop_strings(request(stop="\n")) == ("\n",)
    assert stop_strings(request(stop=["a", "b"])) == ("a", "b")
    with pytest.raises(ValueError):
        request(stop=["1", "2", "3", "4", "5"])


def test_spec_is_a_raw_prompt_with_the_sampling_asked_for() -> None:
    spec = completion_spec(
        request(temperature=0, top_p=0.5, seed=7, stop="!", max_tokens=5), "Once"
    )
    assert spec.prompt == RawPrompt("Once", parse_special=True, param="prompt")
    assert (spec.sampling.temperature, spec.sampling.top_p, spec.sampling.seed) == (0, 0.5, 7)
    assert spec.stop == ("!",)
    assert spec.max_tokens == 5
    assert completion_spec(request(), "x").max_tokens == 16


@pytest.mark.parametrize(
    "fields",
    [{"stream": "yes"}, {"max_tokens": 1.5}, {"echo": 1}, {"temperature": "0"}],
)
def test_types_are_strict(fields: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        request(**fields)
