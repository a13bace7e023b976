"""From a chat history to a streamed reply: prompts, reasoning, the token-to-text streamer, saved chats."""
