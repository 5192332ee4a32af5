#!/usr/bin/env bash
# Leave the loop running headless overnight in tmux:
#   bash scripts/overnight.sh             # checks the set-up, starts tmux session "autoresearch", returns
#   AUTORESEARCH_DEADLINE=07:00 bash scripts/overnight.sh   # end the night at 7 am (or 8h, an ISO time)
#   tmux attach -t autoresearch           # look in; Ctrl-b d to leave it running
#   touch .autoresearch/STOP              # end the night: the agent may stop, no new session starts
#   bash scripts/overnight.sh --inside    # the loop itself, in this terminal (what tmux runs)
# Each Claude Code session runs until it ends (turn limit, full context, an error); the loop then starts a
# fresh one, which resumes from get_history: the history lives in the server, not in the context. Sessions
# that die at once (no credit, a broken set-up) back off exponentially, and the loop gives up after
# MAX_QUICK_FAILS of them in a row rather than hammering the API all night.
set -uo pipefail
cd "$(dirname "$0")/.."

MAX_TURNS=${MAX_TURNS:-400}
SESSION=${SESSION:-autoresearch}
BACKOFF_START_S=${OVERNIGHT_BACKOFF_START_S:-10}   # pause after the first failed session, doubled each time
BACKOFF_MAX_S=${OVERNIGHT_BACKOFF_MAX_S:-600}      # the longest pause between sessions
MIN_SESSION_S=${OVERNIGHT_MIN_SESSION_S:-60}       # a session shorter than this failed at once
MAX_QUICK_FAILS=${OVERNIGHT_MAX_QUICK_FAILS:-5}    # give up after this many such sessions in a row
PROMPT="Follow program.md. Resume the loop: call get_history first, then continue. Never stop."

STATE=$(python3 scripts/night.py state-dir)
LOG="$STATE/agent.log"

say() { echo "$(date -Is) $*" | tee -a "$LOG"; }
fail() { echo "overnight: $*" >&2; exit 2; }

# Whether Claude Code trusts this folder (or a parent): until then headless sessions ignore the project's
# .claude/settings.json allow list, and the loop's tools would wait for approvals nobody gives.
trusted() {
  python3 - "$PWD" <<'EOF'
import json, os, sys
from pathlib import Path
home = Path(os.environ.get("CLAUDE_CONFIG_DIR") or Path.home())
try:
    projects = json.loads((home / ".claude.json").read_text()).get("projects", {})
except (OSError, ValueError):
    sys.exit(1)
folder = Path(sys.argv[1]).resolve()
sys.exit(0 if any(projects.get(str(p), {}).get("hasTrustDialogAccepted") for p in [folder, *folder.parents]) else 1)
EOF
}

# The run tag, validated by the server's own configuration reader.
run_tag() { .venv/bin/python -c 'from pathlib import Path; from server.config import load_config; print(load_config(Path(".")).tag)'; }

# `autoresearch prepare --check` under the run's environment ([autoresearch.env] may name the dataset).
data_ready() {
  .venv/bin/python -c '
import os, subprocess, sys
from pathlib import Path
from server.config import load_config
env = {**os.environ, **load_config(Path(".")).env}
sys.exit(subprocess.call([sys.executable, "-m", "server.dataset", "--check"], env=env, stdout=subprocess.DEVNULL))'
}

preflight() {
  [ -x .venv/bin/python ] || fail "no .venv here; run bash scripts/setup.sh first."
  local tag
  tag=$(run_tag) || fail "autoresearch.toml cannot be read (see above); fix it and start again."
  [ "$tag" != "default" ] || fail "no run tag for the night; set tag = \"nov25\" in autoresearch.toml and commit, or export AUTORESEARCH_TAG=nov25."
  data_ready || fail "the data is not prepared (see above); run .venv/bin/autoresearch prepare first."
  command -v claude >/dev/null || fail "claude is not on PATH; install it with npm install -g @anthropic-ai/claude-code."
  claude auth status >/dev/null 2>&1 || fail "claude is not logged in; run claude auth login (or export ANTHROPIC_API_KEY) first."
  trusted || fail "Claude Code does not trust $PWD yet, so headless sessions would ignore .claude/settings.json; run claude here once, accept the trust dialog, and exit."
  if [ "${1:-}" = "--tmux" ]; then
    command -v tmux >/dev/null || fail "tmux is not installed; apt-get install tmux (or brew install tmux), or run with --inside."
  fi
}

start_night() {
  mkdir -p "$STATE" && rm -f "$STATE/STOP"
  python3 scripts/night.py start ${AUTORESEARCH_DEADLINE:+"$AUTORESEARCH_DEADLINE"} >/dev/null \
    || fail "AUTORESEARCH_DEADLINE=$AUTORESEARCH_DEADLINE cannot be read; give 8h, 90m, 07:00 or an ISO date-time."
}

one_session() {
  claude -p "$PROMPT" \
    --mcp-config .mcp.json --strict-mcp-config \
    --allowedTools "mcp__autoresearch" "Read(./experiment/**)" "Read(./program.md)" "Read(./README.md)" "Read(./CLAUDE.md)" "Read(./docs/**)" \
    --max-turns "$MAX_TURNS" \
    --output-format stream-json --verbose \
    < /dev/null >> "$LOG" 2>&1
}

# Start sessions until the night is over; back off after quick failures, give up after too many in a row.
night_loop() {
  local n=0 quick=0 delay=$BACKOFF_START_S started code took over
  say "night started: $(python3 scripts/night.py show)"
  while over=$(python3 scripts/night.py check); [ $? -eq 0 ]; do
    n=$((n + 1))
    say "session $n starting"
    started=$(date +%s)
    one_session
    code=$?
    took=$(($(date +%s) - started))
    if [ "$took" -ge "$MIN_SESSION_S" ]; then
      quick=0 delay=$BACKOFF_START_S
      say "session $n ended: exit code $code after ${took}s; starting the next one"
      continue
    fi
    quick=$((quick + 1))
    if [ "$quick" -ge "$MAX_QUICK_FAILS" ]; then
      say "giving up: $quick sessions in a row ended within ${MIN_SESSION_S}s (last exit code $code); read $LOG, fix the cause, and start again."
      python3 scripts/night.py stop >/dev/null  # the night is over: the Stop hook must not hold a later session
      report_line
      return 1
    fi
    say "session $n ended: exit code $code after ${took}s, quick failure $quick of $MAX_QUICK_FAILS; retrying in ${delay}s"
    sleep "$delay"
    delay=$((delay * 2 > BACKOFF_MAX_S ? BACKOFF_MAX_S : delay * 2))
  done
  say "night over: ${over#the night is over: }"
  report_line
}

# The command that writes the night's report for the human's morning (server/show/report.py).
report_line() {
  say "the morning report: .venv/bin/autoresearch report --tag $(run_tag) --html"
}

if [ "${1:-}" = "--inside" ]; then
  preflight
  start_night
  export AUTORESEARCH_OVERNIGHT=1
  export CLAUDE_CODE_MCP_AUTO_BACKGROUND_MS=0  # run_experiment blocks for the whole run, as the loop expects
  night_loop
  exit $?
fi
preflight --tmux
tmux new-session -d -s "$SESSION" "bash scripts/overnight.sh --inside"
echo "started tmux session $SESSION; log in $LOG; watch with .venv/bin/autoresearch dashboard (or watch)"
