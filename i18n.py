"""The page's words in Chinese and English; most of our users read Chinese first."""

from __future__ import annotations

from chat import ReplyStats

LANGUAGES = {"zh": "中文", "en": "English"}

TEXT: dict[str, dict[str, str]] = {
    "title": {"zh": "💬 Qwen GPTQ 本地聊天", "en": "💬 Qwen GPTQ local chat"},
    "caption": {
        "zh": "在你自己的 GPU 上运行 GPTQ-Int4 量化模型，对话不出本机。",
        "en": "GPTQ-Int4 models on your own GPU; nothing leaves this machine.",
    },
    "greeting": {"zh": "你好！有什么可以帮您的？", "en": "Hello! How can I help you?"},
    "input_placeholder": {"zh": "输入消息，回车发送", "en": "Type a message and press Enter"},
    "model": {"zh": "模型", "en": "Model"},
    "settings": {"zh": "生成设置", "en": "Generation settings"},
    "system_prompt": {"zh": "系统提示词", "en": "System prompt"},
    "max_new_tokens": {"zh": "最大生成长度（token）", "en": "Max new tokens"},
    "temperature": {"zh": "温度（0 为贪心解码）", "en": "Temperature (0 = greedy)"},
    "top_p": {"zh": "Top-p", "en": "Top-p"},
    "top_k": {"zh": "Top-k（0 为关闭）", "en": "Top-k (0 = off)"},
    "repetition_penalty": {"zh": "重复惩罚", "en": "Repetition penalty"},
    "context_length": {"zh": "上下文长度（token）", "en": "Context length (tokens)"},
    "clear": {"zh": "清空对话", "en": "Clear chat"},
    "language": {"zh": "界面语言", "en": "Language"},
    "loading": {"zh": "正在加载模型……", "en": "Loading the model…"},
    "building_demo": {
        "zh": "未找到已下载的模型，正在本地构建内置演示模型（约 2 分钟，仅首次）……",
        "en": "No downloaded model found: building the built-in demo model (about 2 minutes, first time only)…",
    },
    "load_failed": {"zh": "模型加载失败", "en": "The model could not be loaded"},
    "waiting": {
        "zh": "另一个对话正在生成，请稍候，轮到你时会自动开始。",
        "en": "Another chat is generating; yours starts as soon as it finishes.",
    },
    "too_long": {"zh": "消息过长，未发送", "en": "Message too long, not sent"},
    "failed": {"zh": "生成出错", "en": "Generation failed"},
    "stopped": {"zh": "（已停止）", "en": "(stopped)"},
    "dropped": {"zh": "条较早的消息因超出上下文未发送给模型", "en": "earlier messages left out to fit the context"},
    "first_token": {"zh": "首字延迟", "en": "first token"},
    "tokens_per_s": {"zh": "token/秒", "en": "tokens/s"},
    "prompt_tokens": {"zh": "提示 token", "en": "prompt tokens"},
    "new_tokens": {"zh": "生成 token", "en": "new tokens"},
    "device": {"zh": "设备", "en": "Device"},
    "kernel": {"zh": "GPTQ 内核", "en": "GPTQ kernel"},
    "memory": {"zh": "模型占用内存", "en": "Model memory"},
    "load_time": {"zh": "加载用时", "en": "Load time"},
    "engine": {"zh": "生成方式", "en": "Generation path"},
}


def pick_language(locale: str | None) -> str:
    """Chinese when the browser asks for it, English otherwise."""
    return "zh" if (locale or "").lower().startswith("zh") else "en"


def t(key: str, language: str) -> str:
    return TEXT[key][language]


def stats_line(stats: ReplyStats, language: str) -> str:
    """One line under a reply: how fast it came and what the model saw."""
    parts = []
    if stats.first_token_seconds is not None:
        parts.append(f"{t('first_token', language)} {stats.first_token_seconds:.2f} s")
    if stats.tokens_per_second:
        parts.append(f"{stats.tokens_per_second:.1f} {t('tokens_per_s', language)}")
    parts.append(f"{stats.prompt_tokens} {t('prompt_tokens', language)}")
    parts.append(f"{stats.new_tokens} {t('new_tokens', language)}")
    if stats.dropped_messages:
        parts.append(f"{stats.dropped_messages} {t('dropped', language)}")
    return " · ".join(parts)
