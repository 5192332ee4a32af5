"""autoresearch MCP server: owns the experiment loop so the agent only decides."""
