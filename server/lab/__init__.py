"""What the server decides: the tag's lifecycle and recovery, the editable file and its edits, when a run may
start, the keep gate (the noise floor and its test), the night's caps, and the supervisor of a detached run.
May import `server.run`, `server.store`, `server.config`, `server.errors`, `server.text` and its own modules;
never a face (`app`, `cli`, `demo`) nor `server.show`."""
