#!/usr/bin/env bash
# The test command (the README's, and what .ci/run runs): installs what the tests need, then runs them all.
#   - .venv with the test and lint tools (scripts/setup.sh --dev), and the Ray extra;
#   - bubblewrap, for the sandbox tests, where apt can install it;
#   - Claude Code and the MCP Inspector under .ci/node, for the client tests (npm).
# What cannot be installed is said here, and the tests that need it skip and say why.
# Arguments go to pytest: `bash scripts/test.sh tests/test_cli.py -x`.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh --dev
# The Ray extra, for the Ray backend's tests (tests/test_ray.py); a platform without Ray wheels skips them.
.venv/bin/python -c "import ray" 2>/dev/null || .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[dev,ray]" \
  || echo "Ray could not be installed: the Ray backend's tests will skip"

if ! command -v bwrap >/dev/null; then
  (apt-get update -qq && apt-get install -y -qq bubblewrap >/dev/null) 2>/dev/null \
    || echo "bubblewrap is not installed (apt-get install bubblewrap): the sandbox tests will skip"
fi

CLIENTS=(@anthropic-ai/claude-code@2.1.197 @modelcontextprotocol/inspector@0.15.0 node@22)
if [ -x .ci/node/node_modules/.bin/claude ] && [ -x .ci/node/node_modules/.bin/mcp-inspector ]; then
  :  # installed by an earlier run or by .ci/run
elif command -v npm >/dev/null; then
  npm install --prefix .ci/node --no-audit --no-fund --silent "${CLIENTS[@]}" \
    || echo "npm install failed: the client tests will skip"
else
  echo "npm is not installed: the client tests (Claude Code, the MCP Inspector) will skip"
fi

.venv/bin/python -m pytest -q "$@"
