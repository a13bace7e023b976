"""The public loading API: load a GPTQ checkpoint once per process, on the best device, kernel and engine.

    from model_loader import load
    loaded = load("Qwen/Qwen1.5-7B-Chat-GPTQ-Int4")   # a folder, or a model id under ./models
    loaded.scheduler, loaded.tokenizer, loaded.facts  # generate, encode, describe

The loader lives in `gptq_chat/loading/loader.py`; this file keeps its public names where scripts look for them.
"""

from gptq_chat.loading.loader import LoadedModel, ModelFacts, load, load_uncached

__all__ = ["LoadedModel", "ModelFacts", "load", "load_uncached"]
