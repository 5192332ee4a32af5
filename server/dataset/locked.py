"""The locked experiment/prepare.py as the dataset builder reads it: the format's constants, the cache's place and
the tokenizer train.py loads, so that what `autoresearch prepare` writes is what the locked loader reads. The
file is the repository's (the server is installed from its checkout); it is imported, never copied."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

from server.run.summary import LOCKED_PREPARE


def load(path: Path = LOCKED_PREPARE) -> ModuleType:
    """A module of its own name, so that a run's `import prepare` elsewhere in the process is another module."""
    spec = importlib.util.spec_from_file_location("autoresearch_locked_prepare", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"{path} is missing: the dataset builder reads the experiment's locked prepare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


prepare = load()
