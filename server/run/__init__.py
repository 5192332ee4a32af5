"""One run, measured: its stages (candidate, launch, collect, hand-over, evaluate, classify), the local runner and
its bubblewrap sandbox, what it measures of a process tree from the kernel (usage), the spares started ahead, the
locked evaluator's process, the holdout's scoring, the output contract's parser and the Ray backend. It returns
what it measured; what that means is `server.lab`'s to decide. May import `server.store`, `server.config`,
`server.errors`, `server.text` and its own modules."""
