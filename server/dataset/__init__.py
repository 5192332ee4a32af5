"""The human's one-time dataset preparation (`autoresearch prepare`): corpus sources and downloads
(sources.py), the tokenizer's training and the tokenized splits with their checksums (build.py). Outside the
locked files on purpose: the evaluator trusts a split by the sha256 its meta.json recorded, not by the code that
fetched it. Imports the locked experiment/prepare.py (locked.py) for the format; nothing else of the server."""
