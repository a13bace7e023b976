"""The OpenAI-compatible API: the protocol without HTTP, the HTTP server, and the client for other such servers."""
