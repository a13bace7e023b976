"""The OpenAI-compatible API: `python serve.py [--model PATH_OR_ID] [--host 127.0.0.1] [--port 8000] [--api-key KEY]`.

`/v1/chat/completions`, `/v1/models` and `/health` on the same engine and scheduler as the page
(`gptq_chat/api/server.py`); off loopback it refuses to start without an API key.
"""

from gptq_chat.api.server import main

if __name__ == "__main__":
    main()
