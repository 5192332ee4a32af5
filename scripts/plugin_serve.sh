#!/usr/bin/env bash
# The Claude Code plugin's MCP server: `autoresearch serve` on the project Claude Code opened.
# Claude Code starts it with the project as the working directory and CLAUDE_PROJECT_DIR set; the
# server is the project's own install (.venv from scripts/setup.sh), else one next to the plugin, else PATH.
set -u
root="${AUTORESEARCH_ROOT:-${CLAUDE_PROJECT_DIR:-$PWD}}"
export AUTORESEARCH_ROOT="$root"
for exe in "$root/.venv/bin/autoresearch" "$(dirname "$0")/../.venv/bin/autoresearch"; do
  if [ -x "$exe" ]; then exec "$exe" serve; fi
done
if command -v autoresearch >/dev/null; then exec autoresearch serve; fi
echo "autoresearch plugin: no .venv/bin/autoresearch in $root; run bash scripts/setup.sh there, then restart Claude Code." >&2
exit 1
