"""Tool calls: the Hermes parser on text, the tools rendered as a Qwen3-style chat template would,
and the API (``tools``, ``tool_choice``, calls in the history, ``tool_calls`` whole and streamed)
through HTTP on a router over scripted engines (no Ray), whose answer is a tool call."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

pytest.importorskip("ray")
openai = pytest.importorskip("openai")

from deployments.in_process import MODEL, router_over, serve  # noqa: E402
from glimp_ray.engine.fake import ScriptedEngine, ScriptedStep  # noqa: E402
from glimp_ray.tools import ParsedAnswer, ToolCallText, parse_tool_calls, with_tool_prompt  # noqa: E402

# Ray's class-based ingress leaves a wrapper whose async __del__ Python never awaits.
pytestmark = pytest.mark.filterwarnings("ignore:coroutine 'ingress.*__del__' was never awaited:RuntimeWarning")

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
THINKING = [ScriptedStep("The user wants the weather.\n\n"), ScriptedStep("I call the tool.", 0.0, "think_end")]
QUESTION = [{"role": "user", "content": "Weather in Paris?"}]

# --- the parser ---------------------------------------------------------------------------


def test_a_hermes_call_is_parsed_with_its_arguments_as_json_text() -> None:
    parsed = parse_tool_calls(CALL)
    assert parsed == ParsedAnswer(None, (ToolCallText("get_weather", '{"city": "Paris"}'),))


def test_text_before_the_calls_is_the_content_and_every_call_is_kept() -> None:
    second = '<tool_call>{"name": "get_time", "arguments": {"zone": "CET", "naïve": true}}</tool_call>'
    parsed = parse_tool_calls("Let me look.\n" + CALL + "\n" + second)
    assert parsed.content == "Let me look.\n"
    assert [c.name for c in parsed.tool_calls] == ["get_weather", "get_time"]
    assert json.loads(parsed.tool_calls[1].arguments) == {"zone": "CET", "naïve": True}
    assert "naïve" in parsed.tool_calls[1].arguments  # not escaped, as vLLM writes them


def test_a_call_left_open_by_the_end_of_the_answer_is_still_a_call() -> None:
    parsed = parse_tool_calls('<tool_call>\n{"name": "f", "arguments": {}}')
    assert parsed.tool_calls == (ToolCallText("f", "{}"),)


def test_arguments_written_as_a_json_string_are_unwrapped() -> None:
    parsed = parse_tool_calls('<tool_call>{"name": "f", "arguments": "{\\"x\\": 1}"}</tool_call>')
    assert parsed.tool_calls == (ToolCallText("f", '{"x": 1}'),)


@pytest.mark.parametrize(
    "text",
    [
        "No tools needed: it is sunny.",
        "<tool_call>not json</tool_call>",
        '<tool_call>{"arguments": {}}</tool_call>',  # no name
        '<tool_call>{"name": "f", "arguments": [1]}</tool_call>',
        CALL + "<tool_call>{broken</tool_call>",  # one bad call: the whole answer is text
    ],
)
def test_an_answer_without_valid_calls_is_all_content(text: str) -> None:
    assert parse_tool_calls(text) == ParsedAnswer(text)


# A Qwen3-style template with tools (the tiny test models' templates have none).
QWEN3_TEMPLATE = (
    "{%- if tools %}{{- '<|im_start|>system\\n' }}"
    "{%- if messages[0].role == 'system' %}{{- messages[0].content + '\\n\\n' }}{%- endif %}"
    '{{- "# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n'
    'You are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}'
    '{%- for tool in tools %}{{- "\\n" }}{{- tool | tojson }}{%- endfor %}'
    '{{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within '
    '<tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": '
    '<args-json-object>}\\n</tool_call><|im_end|>\\n" }}'
    "{%- elif messages[0].role == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}{%- endif %}"
    "{%- for m in messages %}{%- if m.role == 'system' and loop.first %}"
    "{%- else %}{{- '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


@pytest.fixture(scope="module")
def qwen3_tokenizer() -> Any:
    from glimp_ray.tiny import build_tokenizer

    return build_tokenizer(1, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], "<|im_end|>", None, QWEN3_TEMPLATE)


@pytest.mark.parametrize("system", [None, "Be brief."])
def test_the_tool_prompt_renders_as_the_template_renders_tools(qwen3_tokenizer: Any, system: str | None) -> None:
    messages = ([{"role": "system", "content": system}] if system else []) + QUESTION
    render = qwen3_tokenizer.apply_chat_template
    expected = render(messages, tools=[WEATHER], tokenize=False, add_generation_prompt=True)
    rendered = render(with_tool_prompt(messages, [WEATHER]), tokenize=False, add_generation_prompt=True)
    assert "get_weather" in expected and rendered == expected


PLAIN_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}<|im_start|>assistant\n"
)


def test_the_engines_render_the_tools_through_the_models_template(qwen3_tokenizer: Any) -> None:
    from glimp_ray.engine.text import render_prompt
    from glimp_ray.types import GlimpseSpec, StepRequest

    request = StepRequest("s", tuple(QUESTION), tools=(WEATHER,), glimpse=GlimpseSpec())
    text, templated = render_prompt(qwen3_tokenizer, request, "<think>", "</think>")
    render = qwen3_tokenizer.apply_chat_template
    expected = render(QUESTION, tools=[WEATHER], tokenize=False, add_generation_prompt=True)
    assert templated and text.startswith(expected) and "get_weather" in expected


def test_a_template_without_tools_gets_them_in_the_system_message() -> None:
    from glimp_ray.engine.text import render_prompt, request_chars
    from glimp_ray.tiny import build_tokenizer
    from glimp_ray.types import GlimpseSpec, StepRequest

    plain = build_tokenizer(1, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], "<|im_end|>", None, PLAIN_TEMPLATE)
    request = StepRequest("s", tuple(QUESTION), tools=(WEATHER,), glimpse=GlimpseSpec())
    text, _ = render_prompt(plain, request, "<think>", "</think>")
    messages = with_tool_prompt(QUESTION, [WEATHER])
    expected = plain.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text.startswith(expected) and text.startswith("<|im_start|>system\n") and "get_weather" in text
    assert request_chars(request) > request_chars(StepRequest("s", tuple(QUESTION), glimpse=GlimpseSpec()))


# --- the API, on a router over scripted engines -------------------------------------------


def engines(answer: str = CALL) -> tuple[ScriptedEngine, ScriptedEngine]:
    return ScriptedEngine("small", THINKING), ScriptedEngine("large", THINKING, answer=answer)


def client_of(base: str, http: httpx.AsyncClient) -> Any:
    return openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="unused", http_client=http, max_retries=0)


def rendered_messages(engine: ScriptedEngine) -> list[dict[str, Any]]:
    """What the last call to ``engine`` was asked to render."""
    return [dict(m) for m in engine.calls[-1].messages or ()]


def test_a_tool_call_comes_back_as_tool_calls() -> None:
    small, large = engines("Checking.\n" + CALL)

    async def scenario(base: str, http: httpx.AsyncClient) -> Any:
        return await client_of(base, http).chat.completions.create(model=MODEL, messages=QUESTION, tools=[WEATHER])

    response = serve(router_over(small, large), scenario)
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Checking.\n"
    [call] = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    # The tools go with every call of both pools, for each model's chat template to render.
    assert all(call.tools == (WEATHER,) for call in small.calls + large.calls)
    assert rendered_messages(large) == QUESTION


def test_tool_choice_none_neither_offers_nor_parses_the_tools() -> None:
    small, large = engines()

    async def scenario(base: str, http: httpx.AsyncClient) -> Any:
        client = client_of(base, http)
        return await client.chat.completions.create(model=MODEL, messages=QUESTION, tools=[WEATHER], tool_choice="none")

    response = serve(router_over(small, large), scenario)
    assert response.choices[0].finish_reason == "stop" and response.choices[0].message.tool_calls is None
    assert response.choices[0].message.content == CALL
    assert rendered_messages(large) == QUESTION
    assert all(call.tools is None for call in small.calls + large.calls)


def test_without_tools_an_answer_that_looks_like_a_call_is_text() -> None:
    small, large = engines()

    async def scenario(base: str, http: httpx.AsyncClient) -> Any:
        return (await http.post(f"{base}/v1/chat/completions", json={"model": MODEL, "messages": QUESTION})).json()

    body = serve(router_over(small, large), scenario)
    message = body["choices"][0]["message"]
    assert message["content"] == CALL and "tool_calls" not in message
    assert body["choices"][0]["finish_reason"] == "stop"


def test_streamed_tool_calls_arrive_as_a_delta_and_rebuild_the_same_call() -> None:
    small, large = engines()

    async def scenario(base: str, http: httpx.AsyncClient) -> Any:
        stream = await client_of(base, http).chat.completions.create(
            model=MODEL, messages=QUESTION, tools=[WEATHER], stream=True
        )
        return [chunk async for chunk in stream]

    chunks = serve(router_over(small, large), scenario)
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    reasoning = "".join(d.model_extra.get("reasoning_content") or "" for d in deltas)
    assert reasoning.startswith("The user wants the weather.")
    calls = [call for d in deltas for call in d.tool_calls or ()]
    assert len(calls) == 1 and calls[0].index == 0 and calls[0].id.startswith("call_")
    assert calls[0].function.name == "get_weather" and json.loads(calls[0].function.arguments) == {"city": "Paris"}
    assert not any(d.content for d in deltas)  # the answer is only the call
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"


def test_calls_and_tool_results_in_the_history_reach_the_template() -> None:
    small, large = engines("It is 18 degrees in Paris.")
    function = {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    history = [
        *QUESTION,
        {"role": "assistant", "tool_calls": [{"id": "call_1", "type": "function", "function": function}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18 C"},
    ]

    async def scenario(base: str, http: httpx.AsyncClient) -> Any:
        return await client_of(base, http).chat.completions.create(model=MODEL, messages=history, tools=[WEATHER])

    response = serve(router_over(small, large), scenario)
    assert response.choices[0].finish_reason == "stop"
    assert response.choices[0].message.content == "It is 18 degrees in Paris."
    sent = rendered_messages(large)
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    assert sent == [
        QUESTION[0],
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "content": "18 C", "tool_call_id": "call_1"},
    ]


@pytest.mark.parametrize(
    ("fields", "param", "words"),
    [
        ({"tools": [WEATHER], "tool_choice": "required"}, "tool_choice", ["'required'", "hf engine", "large pool"]),
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
            "tool_choice",
            ["'get_weather'", "hf engine"],
        ),
        ({"tool_choice": "required"}, "tool_choice", ["needs tools"]),
        ({"tools": [WEATHER], "tool_choice": "sometimes"}, "tool_choice", []),
        ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools.0.function.name", []),
        ({"tools": [{"type": "web_search"}]}, "tools.0.type", []),
        (
            {"messages": [*QUESTION, {"role": "tool", "content": "18 C"}]},
            "messages.1",
            ["tool_call_id"],
        ),
        (
            {
                "messages": [
                    {
                        "role": "assistant",
                        "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{x"}}],
                    }
                ]
            },
            "messages.0.tool_calls.0.function.arguments",
            ["JSON object"],
        ),
    ],
)
def test_what_cannot_be_honoured_is_a_400_naming_the_field(
    fields: dict[str, Any], param: str, words: list[str]
) -> None:
    small, large = engines()

    async def scenario(base: str, http: httpx.AsyncClient) -> httpx.Response:
        return await http.post(f"{base}/v1/chat/completions", json={"model": MODEL, "messages": QUESTION, **fields})

    response = serve(router_over(small, large), scenario)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and all(w in error["message"] for w in words), error
    assert not large.calls and not small.calls  # refused before any model call


def test_the_named_engine_is_the_one_that_writes_the_answer() -> None:
    small, large = engines()
    body = {"model": MODEL, "messages": QUESTION, "tools": [WEATHER], "tool_choice": "required"}
    body["glimp"] = {"policy": "small"}  # the small model then answers too

    async def scenario(base: str, http: httpx.AsyncClient) -> httpx.Response:
        return await http.post(f"{base}/v1/chat/completions", json=body)

    vllm_small = {"small": {"model": "small", "engine": "vllm"}, "routing": {"threshold": 1.0, "entropy": "topk"}}
    response = serve(router_over(small, large, **vllm_small), scenario)
    assert response.status_code == 400
    assert "vllm engine serving the small pool" in response.json()["error"]["message"]


def test_the_tools_count_toward_the_prompts_characters() -> None:
    small, large = engines()
    serving = {"model_name": MODEL, "request_limits": {"max_prompt_chars": 1000}}
    big = {"type": "function", "function": {"name": "f", "description": "x" * 1000}}

    async def scenario(base: str, http: httpx.AsyncClient) -> list[httpx.Response]:
        body = {"model": MODEL, "messages": QUESTION}
        return [
            await http.post(f"{base}/v1/chat/completions", json={**body, "tools": [WEATHER]}),
            await http.post(f"{base}/v1/chat/completions", json={**body, "tools": [big]}),
        ]

    fits, too_long = serve(router_over(small, large, serving=serving), scenario)
    assert fits.status_code == 200
    assert too_long.status_code == 400 and too_long.json()["error"]["code"] == "context_length_exceeded"
