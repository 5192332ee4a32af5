"""Tool calls over a real stdio MCP session, timed in the client, with what the model would see."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from mcp import Client
from mcp.types import TextContent

SERVER = "autoresearch"  # the .mcp.json entry's name: Claude Code calls the tools mcp__autoresearch__<tool>


@dataclass
class Call:
    """One tool call: its input, the text the model reads back, and its wall time in the client."""

    tool: str
    args: dict[str, Any]
    text: str
    data: dict[str, Any]
    is_error: bool
    started: float  # time.time() just before the request
    ended: float  # time.time() when the reply was parsed

    @property
    def seconds(self) -> float:
        return self.ended - self.started


async def call(client: Client, tool: str, **args: Any) -> Call:
    started = time.time()
    result = await client.call_tool(tool, args)
    ended = time.time()
    text = "\n".join(b.text for b in result.content if isinstance(b, TextContent))
    data = result.structured_content or {}
    return Call(tool, args, text, data, bool(result.is_error), started, ended)


async def checked(client: Client, tool: str, **args: Any) -> Call:
    result = await call(client, tool, **args)
    if result.is_error:
        raise RuntimeError(f"{tool}({json.dumps(args)[:200]}) failed: {result.text[:500]}")
    return result


async def decide(client: Client, run: Call) -> Call:
    """What the agent does after a run: keep an improvement, discard anything else."""
    tool = "keep" if run.data.get("improved") else "discard"
    return await checked(client, tool)


def mcp_name(tool: str) -> str:
    return f"mcp__{SERVER}__{tool}"
