"""What people and agents read: the tools' pydantic results, history tables, the resumed session's brief, the live
terminal and web views, progress.png, the morning report and the reviewable branch of `autoresearch finalize`.
May import `server.lab`, `server.run`, `server.store`, `server.config`, `server.errors`, `server.text`; never a
face (`app`, `cli`, `demo`), and nothing below imports it."""
