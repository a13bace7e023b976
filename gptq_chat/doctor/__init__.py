"""The environment doctor: what on this machine stands between the user and a chat, and the command that fixes it."""
