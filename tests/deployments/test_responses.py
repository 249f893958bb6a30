"""``POST /v1/responses`` with the official openai client (``client.responses.create``, plain and
streamed): on a router over scripted engines through HTTP (no Ray), and once on the served tiny
pair."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from deployments.in_process import MODEL, router_over, serve
from tests.deployments.test_tools import CALL, THINKING, WEATHER, client_of, engines, rendered_messages

openai = pytest.importorskip("openai")

pytestmark = pytest.mark.filterwarnings("ignore:coroutine 'ingress.*__del__' was never awaited:RuntimeWarning")

ANSWER = "It is sunny."
REASONING = "The user wants the weather.\n\nI call the tool."
FUNCTION_TOOL = {"type": "function", **WEATHER["function"]}  # Responses-style: the function's fields beside type


def create(router: Any, **fields: Any) -> Any:
    async def scenario(base: str, http: httpx.AsyncClient) -> Any:
        return await client_of(base, http).responses.create(model=MODEL, **fields)

    return serve(router, scenario)


def events_of(router: Any, **fields: Any) -> list[Any]:
    async def scenario(base: str, http: httpx.AsyncClient) -> Any:
        stream = await client_of(base, http).responses.create(model=MODEL, stream=True, **fields)
        return [event async for event in stream]

    return serve(router, scenario)


def test_a_response_has_the_reasoning_item_then_the_message() -> None:
    small, large = engines(ANSWER)
    response = create(router_over(small, large), input="Weather in Paris?", instructions="Be brief.")
    assert response.object == "response" and response.id.startswith("resp_") and response.status == "completed"
    reasoning, message = response.output
    assert reasoning.type == "reasoning" and [c.text for c in reasoning.content] == [REASONING]
    assert message.type == "message" and message.role == "assistant" and message.status == "completed"
    assert response.output_text == ANSWER
    assert response.instructions == "Be brief."
    usage = response.usage
    assert usage.output_tokens_details.reasoning_tokens == len("The user wants the weather.\n\nI call the tool.")
    assert usage.output_tokens == usage.output_tokens_details.reasoning_tokens + len(ANSWER)
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    # The instructions are a system message before the input.
    assert rendered_messages(large) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris?"},
    ]


def test_input_items_become_the_chat_history() -> None:
    small, large = engines(ANSWER)
    items = [
        {"role": "developer", "content": "Answer in English."},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Weather in Paris?"}]},
        {"type": "reasoning", "id": "rs_1", "summary": []},  # earlier thinking is dropped
        {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city": "Paris"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
    ]
    create(router_over(small, large), input=items, tools=[FUNCTION_TOOL])
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    assert all(call.tools for call in large.calls)
    assert rendered_messages(large) == [
        {"role": "developer", "content": "Answer in English."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "content": "sunny", "tool_call_id": "call_1"},
    ]


def test_a_tool_call_is_a_function_call_item() -> None:
    small, large = engines(CALL)
    response = create(router_over(small, large), input="Weather in Paris?", tools=[FUNCTION_TOOL])
    assert [item.type for item in response.output] == ["reasoning", "function_call"]
    call = response.output[1]
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Paris"}
    assert call.call_id.startswith("call_") and call.status == "completed"
    assert response.tools[0].name == "get_weather" and response.tool_choice == "auto"


def test_streamed_events_come_in_openais_order_and_end_with_the_plain_response() -> None:
    small, large = engines(ANSWER)
    events = events_of(router_over(small, large), input="Weather in Paris?")
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert [e.type for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.reasoning_text.delta"] * len(THINKING),
        "response.reasoning_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert events[0].response.status == "in_progress" and events[0].response.output == []
    deltas = [e.delta for e in events if e.type == "response.reasoning_text.delta"]
    assert "".join(deltas).rstrip() == REASONING
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == ANSWER
    final = events[-1].response
    plain = create(router_over(*engines(ANSWER)), input="Weather in Paris?")
    assert final.output_text == plain.output_text == ANSWER
    assert [item.type for item in final.output] == [item.type for item in plain.output]
    assert final.output[0].content[0].text == plain.output[0].content[0].text
    assert final.usage == plain.usage


def test_the_clients_stream_helper_rebuilds_the_response() -> None:
    small, large = engines(CALL)

    async def scenario(base: str, http: httpx.AsyncClient) -> Any:
        client = client_of(base, http)
        async with client.responses.stream(model=MODEL, input="Weather?", tools=[FUNCTION_TOOL]) as stream:
            async for _ in stream:
                pass
            return await stream.get_final_response()

    final = serve(router_over(small, large), scenario)
    assert [item.type for item in final.output] == ["reasoning", "function_call"]
    assert json.loads(final.output[1].arguments) == {"city": "Paris"}


def test_an_answer_cut_by_max_output_tokens_is_incomplete() -> None:
    small, large = engines(ANSWER)
    response = create(router_over(small, large), input="Weather?", max_output_tokens=4)
    assert response.status == "incomplete" and response.incomplete_details.reason == "max_output_tokens"
    assert response.output_text == ANSWER[:4] and response.output[-1].status == "incomplete"
    events = events_of(router_over(*engines(ANSWER)), input="Weather?", max_output_tokens=4)
    assert events[-1].type == "response.incomplete" and events[-1].response.output_text == ANSWER[:4]


def test_api_keys_guard_the_responses_route() -> None:
    from deployments.auth import sha256_hex

    keyed = {"serving": {"model_name": MODEL, "api_keys": [{"name": "team", "key_sha256": sha256_hex("sk-good")}]}}

    async def scenario(base: str, http: httpx.AsyncClient) -> list[int]:
        body = {"model": MODEL, "input": "hi"}
        codes = []
        for key in (None, "sk-bad", "sk-good"):
            headers = {"authorization": f"Bearer {key}"} if key else {}
            codes.append((await http.post(f"{base}/v1/responses", json=body, headers=headers)).status_code)
        return codes

    assert serve(router_over(*engines(ANSWER), **keyed), scenario) == [401, 401, 200]


@pytest.mark.parametrize(
    ("fields", "status", "param"),
    [
        ({"input": ""}, 400, "input"),
        ({"input": []}, 400, "input"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, 400, "input"),
        ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]}, 400, "input"),
        ({"input": [{"role": "tool", "content": "x"}]}, 400, "input"),
        ({"input": 5}, 400, "input"),
        ({"previous_response_id": "resp_1"}, 400, "previous_response_id"),
        ({"conversation": "conv_1"}, 400, "conversation"),
        ({"background": True}, 400, "background"),
        ({"text": {"format": {"type": "json_schema", "name": "x", "schema": {}}}}, 400, "text.format"),
        ({"max_output_tokens": 0}, 400, "max_output_tokens"),
        ({"max_output_tokens": 10**9}, 400, "max_output_tokens"),
        ({"temperature": "hot"}, 400, "temperature"),
        ({"tools": [FUNCTION_TOOL], "tool_choice": "required"}, 400, "tool_choice"),
        ({"tools": [{"type": "web_search"}]}, 400, "tools.0.type"),
        ({"glimp": {"policy": "sometimes"}}, 400, "glimp.policy"),
        ({"model": "other"}, 404, "model"),
    ],
)
def test_bad_input_is_refused_in_openais_error_shape(fields: dict[str, Any], status: int, param: str) -> None:
    small, large = engines(ANSWER)

    async def scenario(base: str, http: httpx.AsyncClient) -> httpx.Response:
        return await http.post(f"{base}/v1/responses", json={"model": MODEL, "input": "hi", **fields})

    response = serve(router_over(small, large), scenario)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["param"] == param, error
    assert not small.calls and not large.calls


def test_the_served_pair_answers_through_the_responses_api(serve_app: str) -> None:
    client = openai.OpenAI(base_url=f"{serve_app}/v1", api_key="unused", max_retries=0, timeout=120)
    plain = client.responses.create(model="glimp-tiny", input="What is 6 times 7?")
    events = list(client.responses.create(model="glimp-tiny", input="What is 6 times 7?", stream=True))
    assert events[0].type == "response.created" and events[-1].type in ("response.completed", "response.incomplete")
    final = events[-1].response
    # The tiny pair is greedy: the streamed response is the plain one.
    assert final.output_text == plain.output_text
    assert [item.type for item in final.output] == [item.type for item in plain.output]
    assert plain.output[0].type == "reasoning" and plain.output[-1].type == "message"
    assert final.usage.output_tokens == plain.usage.output_tokens > 0
