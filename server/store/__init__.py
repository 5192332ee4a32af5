"""What the server keeps: the hash-chained history of every run and decision (runs.jsonl, results.tsv), the git
plumbing (run commits in a private index, refs, snapshots, diffs), the pins of the locked files, the repository
lock and the slot registry. Nothing here decides or runs anything. May import `server.config`, `server.errors`,
`server.text` and its own modules only."""
