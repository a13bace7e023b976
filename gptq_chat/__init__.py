"""Qwen GPTQ Chat: a private chat page and an OpenAI-compatible API for GPTQ-Int4 Qwen models on your own GPU.

Each folder is one room of the house; layers point down only (ui, api → chat → loading → engine):

    engine/   tensors only: the network, its GPTQ linears, sampling, the engines, the scheduler, tensor parallelism
    loading/  from a checkpoint folder to a model on the cards: checks, kernel, memory plan, placement, the loader
    models/   models on disk and where they come from: the catalog, hub downloads, the store, the demo model
    chat/     from a history to a streamed reply: prompts, reasoning, the token→text streamer, saved chats
    api/      the OpenAI-compatible API: the protocol, the HTTP server, the client for other servers
    ui/       the Streamlit page: it only renders; its logic lives in plain modules beside it
    doctor/   what stands between the user and a chat, and the command that fixes it
    testing/  inputs for tests and benchmarks (random-weight checkpoints, the Qwen tokenizer offline); no production
              module imports it
"""
