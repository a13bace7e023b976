"""The exact shapes of Qwen's published chat models, as data: the catalog plans with them, benchmarks write them.

Decode speed and memory depend on the shapes, not on the weights' values, so `bench.py --shape qwen1.5-7b` measures
the real model's speed on a random-weight checkpoint written in seconds (`gptq_chat.testing.random_checkpoint`).
"""

from __future__ import annotations

from gptq_chat.engine.shape import ModelShape


def _qwen(
    hidden: int,
    intermediate: int,
    layers: int,
    heads: int,
    kv_heads: int,
    vocab: int,
    *,
    tied: bool,
    rope_theta: float = 1e6,
) -> ModelShape:
    """A Qwen2-architecture chat model's shape, through the one config.json rule (32k positions, eps 1e-6)."""
    return ModelShape.from_config(
        {
            "model_type": "qwen2",
            "hidden_size": hidden,
            "intermediate_size": intermediate,
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "num_key_value_heads": kv_heads,
            "vocab_size": vocab,
            "max_position_embeddings": 32768,
            "rope_theta": rope_theta,
            "rms_norm_eps": 1e-6,
            "tie_word_embeddings": tied,
        }
    )


# Sources: the models' own config.json on their Hugging Face pages. "official" = the file in the Qwen/...
# repository itself; "copy" = a config.json whose `_name_or_path` (or stated origin) is the Qwen model, saved by a
# fine-tune or re-upload, which keeps every shape field. Each entry was also checked against the parameter count
# in the model's name.
# Qwen1.5 chat: rope_theta 1e6 except 4B (5e6); rms_norm_eps 1e-6; max_position_embeddings 32768.
# Qwen2.5 instruct: rope_theta 1e6; rms_norm_eps 1e-6 (the 14B/32B *base* configs say 1e-5, the
# instruct ones 1e-6); max_position_embeddings 32768 (131072 in the base configs).
QWEN_SHAPES: dict[str, ModelShape] = {
    # copy: huggingface.co/Setpember/qwen/blob/main/config.json (_name_or_path Qwen/Qwen1.5-0.5B-Chat)
    # and the ytyeung/Qwen1.5-0.5B-Chat-SFT-riddles upload; 0.46B params with the tied embedding. Written
    # here: 472.5 MB (450.6 MiB); the published GPTQ-Int4 model.safetensors is listed as 450.99 MB
    # (ai.gitee.com mirror of Qwen/Qwen1.5-0.5B-Chat-GPTQ-Int4).
    "qwen1.5-0.5b": _qwen(1024, 2816, 24, 16, 16, 151936, tied=True),
    # copy: huggingface.co/gmonsoon/Qwen1.5-1.8B/.../config.json, XinNuyoah/model-2.0, CMLL/ZhongJing-2-1_8b
    # (all _name_or_path Qwen/Qwen1.5-1.8B-Chat): untied; 1.84B params only if untied. mlc-llm's preset
    # "qwen2" says tied and 4096 positions: an edited copy, not followed.
    "qwen1.5-1.8b": _qwen(2048, 5504, 24, 16, 16, 151936, tied=False),
    # copy: huggingface.co/smorce/smorce-qlora-Qwen1.5-4B-Chat/blame/main/config.json; 3.95B params.
    "qwen1.5-4b": _qwen(2560, 6912, 40, 20, 20, 151936, tied=False, rope_theta=5e6),
    # official: huggingface.co/Qwen/Qwen1.5-7B-Chat/blob/c893e33b.../config.json
    "qwen1.5-7b": _qwen(4096, 11008, 32, 32, 32, 151936, tied=False),
    # copy: huggingface.co/MACLAB-HFUT/PsycoLLM (…/Qwen1.5-14B-Chat), LoneStriker/Qwen1.5-14B-Chat-AWQ,
    # DeepDream2045/... (_name_or_path Qwen/Qwen1.5-14B-Chat): vocab 152064.
    "qwen1.5-14b": _qwen(5120, 13696, 40, 40, 40, 152064, tied=False),
    # copy: huggingface.co/ecnu-icalk/educhat-sft-002-32b-qwen1.5 (…/Qwen1.5-32B-Chat) and
    # Minami-su/Qwen1.5-32B-Chat-quip-3bit: 40 query heads, 8 KV heads (GQA). A third-party table that
    # says 64 heads is wrong.
    "qwen1.5-32b": _qwen(5120, 27392, 64, 40, 8, 152064, tied=False),
    # official: huggingface.co/Qwen/Qwen1.5-72B-Chat/blob/3eebb4de.../config.json
    "qwen1.5-72b": _qwen(8192, 24576, 80, 64, 64, 152064, tied=False),
    # copy: huggingface.co/Jonathanmann/qwen-sms-3400 (_name_or_path Qwen/Qwen2.5-0.5B-Instruct).
    "qwen2.5-0.5b": _qwen(896, 4864, 24, 14, 2, 151936, tied=True),
    # copy: huggingface.co/onnx-community/Qwen2.5-1.5B-Instruct/.../config.json (HF staff re-upload).
    "qwen2.5-1.5b": _qwen(1536, 8960, 28, 12, 2, 151936, tied=True),
    # copy: huggingface.co/osllmai-community/Qwen2.5-3B-Instruct and hsuwill000/Qwen2.5-3B-Instruct-openvino.
    "qwen2.5-3b": _qwen(2048, 11008, 36, 16, 2, 151936, tied=True),
    # copy: huggingface.co/osllmai-community/Qwen2.5-7B-Instruct, CarbonLover/krx_qwen2.5_it_test. Written
    # here: 5.58 GB in 2 shards, as Qwen/Qwen2.5-7B-Instruct-GPTQ-Int4's file list (4 GB + 1.58 GB).
    "qwen2.5-7b": _qwen(3584, 18944, 28, 28, 4, 152064, tied=False),
    # copy: huggingface.co/osllmai-community/Qwen2.5-14B-Instruct, sknow-lab/Qwen2.5-14B-CIC-ACLARC.
    "qwen2.5-14b": _qwen(5120, 13824, 48, 40, 8, 152064, tied=False),
    # copy: huggingface.co/GAIR/LIMO (…/Qwen2.5-32B-Instruct), Cqy2019/m1-32B-1m; shapes also equal the
    # official Qwen/Qwen2.5-32B (base) config.json, whose rms_norm_eps is 1e-5.
    "qwen2.5-32b": _qwen(5120, 27648, 64, 40, 8, 152064, tied=False),
    # copy: huggingface.co/m8than/banana-2-b-72b and OPEA/Qwen2.5-72B-Instruct-int4-sym-inc (float
    # model: intermediate 29568). The GPTQ-Int4 release pads the MLP to 29696 (= 232 groups of 128, so
    # that 2/4/8-way tensor parallelism splits evenly): stated by a third-party write-up
    # (fast.hugflare.com/Ubuku/Qwen2.5-Math-72B-Instruct-GPTQ-Int4-TP2); Qwen's own commit "pad
    # intermediate_size to 29696" is verified for Qwen2-VL-72B-Instruct-GPTQ-Int4, and the Qwen2.5
    # GPTQ config.json itself could not be read here: UNVERIFIED for Qwen2.5-72B-Instruct-GPTQ-Int4.
    "qwen2.5-72b": _qwen(8192, 29696, 80, 64, 8, 152064, tied=False),
}
# Short names: Qwen1.5 chat, the family this app was first built for (`--shape 7b`).
for _size in ("0.5b", "1.8b", "4b", "7b", "14b", "32b", "72b"):
    QWEN_SHAPES[_size] = QWEN_SHAPES[f"qwen1.5-{_size}"]
