"""Work taken off each turn (issue 13, item 6) gives the same answers as the work it replaced."""

from __future__ import annotations

import json

import httpx
import pytest
from openai._models import construct_type
from openai.types.chat import ChatCompletion

from tests.support.factories import make_conversation
from zenthor.agent.context import (
    estimate_text_tokens,
    estimate_tokens,
    estimate_tools_tokens,
    fit_to_window,
    load_conversation,
)
from zenthor.agent.errors import ModelError
from zenthor.agent.model_client import parse_completion, response_data
from zenthor.models import Conversation


def call(name: object = "core_time_now", arguments: object = "{}", **extra: object) -> dict:
    return {"id": "call_1", "type": "function", "function": {"name": name, "arguments": arguments}, **extra}


def body(message: object, **extra: object) -> dict:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "served-model",
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        **extra,
    }


# Well-formed answers and the malformed ones a model server has been seen to send.
BODIES = [
    body({"role": "assistant", "content": "hello"}),
    body({"role": "assistant", "content": None, "tool_calls": [call()]}),
    body({"role": "assistant", "content": "both", "tool_calls": [call(), call("other", {"a": 1})]}),
    body(
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"type": "function", "function": {"name": "x"}}],
        }
    ),
    body({"role": "assistant", "content": None, "tool_calls": [call(name=None)]}),
    body({"role": "assistant", "content": None, "tool_calls": [call(name=7)]}),
    body({"role": "assistant", "content": None, "tool_calls": ["not a call"]}),
    body({"role": "assistant", "content": None, "tool_calls": [{"id": "c", "function": "not an object"}]}),
    body({"role": "assistant", "content": "   "}),
    body(None),
    body("not a message"),
    {**body({"role": "assistant", "content": "x"}), "choices": []},
    {**body({"role": "assistant", "content": "x"}), "choices": ["not a choice"]},
    {**body({"role": "assistant", "content": "x"}), "choices": None},
    {**body({"role": "assistant", "content": "no model"}), "model": None},
    {"choices": [{"message": {"content": "bare"}}]},
    {"error": "no choices at all"},
    ["a", "list"],
    "a string",
]


def outcome(response: object) -> object:
    try:
        return parse_completion(response, "asked-model")
    except ModelError as error:
        return ("ModelError", error.kind, error.message)
    except Exception as error:  # noqa: BLE001 - the same failure either way is what is checked
        return (type(error).__name__, str(error))


@pytest.mark.parametrize("data", BODIES)
def test_the_json_reads_as_the_sdks_typed_response_did(data):
    """parse_completion of the JSON equals parse_completion of the ChatCompletion the SDK built
    from it (its non-strict construct_type), answers and format errors alike."""
    typed = construct_type(type_=ChatCompletion, value=data)
    assert outcome(data) == outcome(typed)


def response(content: bytes, content_type: str | None) -> httpx.Response:
    headers = {"content-type": content_type} if content_type else {}
    return httpx.Response(200, headers=headers, content=content)


def test_the_body_is_read_as_the_sdk_reads_it():
    answer = json.dumps(body({"role": "assistant", "content": "hi"})).encode()
    assert response_data(response(answer, "application/json")) == json.loads(answer)
    assert response_data(response(answer, "application/json; charset=utf-8")) == json.loads(answer)
    # Another content type: JSON if it parses, else the text (which then has no choices).
    assert response_data(response(answer, "text/plain")) == json.loads(answer)
    assert response_data(response(b"<html>oops</html>", "text/html")) == "<html>oops</html>"
    assert response_data(response(b"<html>oops</html>", None)) == "<html>oops</html>"
    # Said to be JSON but is not: a ValueError, classified as a format error, as before.
    with pytest.raises(ValueError):
        response_data(response(b"<html>oops</html>", "application/json"))


def test_the_tools_estimate_follows_the_tools():
    tools = [{"type": "function", "function": {"name": f"t{i}", "description": "d" * 100}} for i in range(3)]
    expected = estimate_text_tokens(json.dumps(tools))
    assert estimate_tools_tokens(tools) == expected
    assert estimate_tools_tokens([dict(tool) for tool in tools]) == expected  # an equal list
    tools[0]["function"]["description"] = "d" * 1000  # changed in place: counted again
    assert estimate_tools_tokens(tools) == estimate_text_tokens(json.dumps(tools)) > expected
    assert estimate_tools_tokens(None) == 0 and estimate_tools_tokens([]) == 0


def test_the_window_estimate_is_the_estimate_of_what_is_sent():
    tools = [{"type": "function", "function": {"name": f"t{i}", "description": "d" * 200}} for i in range(5)]
    call_message = {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "t0", "arguments": "{}"}}],
    }
    history = [
        *(
            {"role": "user" if i % 2 == 0 else "assistant", "content": f"m{i} " + "x" * 300}
            for i in range(60)
        ),
        call_message,
        {"role": "tool", "tool_call_id": "c1", "content": "r" * 500},
    ]
    modes = set()
    for window, turn_tools in ((1500, tools), (1500, None), (4000, tools), (100_000, tools), (600, None)):
        messages, compaction = fit_to_window("sys " * 30, history, [], window=window, tools=turn_tools)
        assert compaction.estimated_tokens == estimate_tokens(messages, turn_tools)
        modes.add(compaction.mode)
    assert modes == {"none", "summarized", "dropped"}  # a summary's own tokens counted too


def test_the_conversation_is_read_with_its_route():
    conversation_id = make_conversation(chat_id="chat-9", channel="webhook", account_id="acct-9")
    conversation = load_conversation(conversation_id)
    assert (conversation.id, conversation.channel, conversation.account_id, conversation.chat_id) == (
        conversation_id,
        "webhook",
        "acct-9",
        "chat-9",
    )
    with pytest.raises(Conversation.DoesNotExist):
        load_conversation(conversation_id + 1000)
