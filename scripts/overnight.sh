#!/usr/bin/env bash
# Leave the loop running headless overnight in tmux:
#   bash scripts/overnight.sh            # starts tmux session "autoresearch" and returns
#   tmux attach -t autoresearch          # look in; Ctrl-b d to leave it running
#   touch .autoresearch/STOP             # ask the agent to stop at its next stop (then kill the session)
# Each Claude Code session runs until it ends (turn limit, context full, an error); the outer loop then
# starts a fresh one, which resumes from get_history: the history lives in the server, not the context.
set -euo pipefail
cd "$(dirname "$0")/.."
MAX_TURNS=${MAX_TURNS:-400}
SESSION=${SESSION:-autoresearch}
if [ "${1:-}" != "--inside" ]; then
  command -v tmux >/dev/null || { echo "tmux is not installed (apt-get install tmux / brew install tmux)"; exit 2; }
  command -v claude >/dev/null || { echo "claude is not on PATH (npm install -g @anthropic-ai/claude-code)"; exit 2; }
  mkdir -p .autoresearch && rm -f .autoresearch/STOP
  tmux new-session -d -s "$SESSION" "bash scripts/overnight.sh --inside"
  echo "started tmux session $SESSION; logs in .autoresearch/agent.log; watch with: .venv/bin/autoresearch watch"
  exit 0
fi
export AUTORESEARCH_OVERNIGHT=1
export CLAUDE_CODE_MCP_AUTO_BACKGROUND_MS=0  # run_experiment blocks for the whole run, as the loop expects
while [ ! -e .autoresearch/STOP ]; do
  claude -p "Follow program.md. Resume the loop: call get_history first, then continue. Never stop." \
    --mcp-config .mcp.json \
    --allowedTools "mcp__autoresearch" "Read" \
    --max-turns "$MAX_TURNS" \
    --output-format stream-json --verbose \
    < /dev/null >> .autoresearch/agent.log 2>&1 || true
  echo "$(date -Is) session ended; restarting in 10 s" >> .autoresearch/agent.log
  sleep 10
done
