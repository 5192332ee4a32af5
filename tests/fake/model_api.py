"""A stand-in for the model behind Claude Code: a local Messages API that asks for given tool calls, once.

Claude Code itself runs for real (its permission rules, its tools); only the model's answers are scripted:
the first request that offers tools gets every call of `calls` as tool_use blocks, every later one a plain
"done". The tool results Claude Code sends back are kept by id, so a test sees what each call returned, or
that Claude Code refused it.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Script:
    """The calls to ask for (id -> (tool, input)) and what came back (id -> tool_result block)."""

    calls: dict[str, tuple[str, dict[str, Any]]]
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    asked: bool = False


def _events(blocks: list[dict[str, Any]], stop: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """The server-sent events of one streamed assistant message."""
    message: dict[str, Any] = {"id": "msg_fake", "type": "message", "role": "assistant", "model": "fake",
                               "content": [], "stop_reason": None, "stop_sequence": None,
                               "usage": {"input_tokens": 1, "output_tokens": 1}}  # fmt: skip
    yield "message_start", {"type": "message_start", "message": message}
    for index, block in enumerate(blocks):
        if block["type"] == "text":
            start: dict[str, Any] = {"type": "text", "text": ""}
            delta = {"type": "text_delta", "text": block["text"]}
        else:
            start = {**block, "input": {}}
            delta = {"type": "input_json_delta", "partial_json": json.dumps(block["input"])}
        yield "content_block_start", {"type": "content_block_start", "index": index, "content_block": start}
        yield "content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}
        yield "content_block_stop", {"type": "content_block_stop", "index": index}
    yield "message_delta", {"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None},
                            "usage": {"output_tokens": 1}}  # fmt: skip
    yield "message_stop", {"type": "message_stop"}


def _answer(script: Script, body: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
    for message in body.get("messages", []):
        content = message.get("content")
        for block in content if isinstance(content, list) else []:
            if isinstance(block, dict) and block.get("type") == "tool_result":
                script.results[block["tool_use_id"]] = block
    if body.get("tools") and not script.asked:
        script.asked = True
        uses = [
            {"type": "tool_use", "id": key, "name": tool, "input": args} for key, (tool, args) in script.calls.items()
        ]
        return uses, "tool_use"
    return [{"type": "text", "text": "done"}], "end_turn"


def _handler(script: Script) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
            pass

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("content-length", "0"))) or b"{}")
            blocks, stop = _answer(script, body)
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.end_headers()
            for name, data in _events(blocks, stop):
                self.wfile.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())

    return Handler


@contextmanager
def fake_model(script: Script) -> Iterator[str]:
    """Serve the script on a free local port; yields the base URL for ANTHROPIC_BASE_URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(script))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
