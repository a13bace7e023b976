"""The page's words in Chinese and English; most of our users read Chinese first."""

from __future__ import annotations

from typing import Any

LANGUAGES = {"zh": "中文", "en": "English"}

TEXT: dict[str, dict[str, str]] = {
    "title": {"zh": "💬 Qwen GPTQ 本地聊天", "en": "💬 Qwen GPTQ local chat"},
    "caption": {
        "zh": "在你自己的 GPU 上运行 GPTQ-Int4 量化模型，对话不出本机。",
        "en": "GPTQ-Int4 models on your own GPU; nothing leaves this machine.",
    },
    "greeting": {"zh": "你好！有什么可以帮您的？", "en": "Hello! How can I help you?"},
    "input_placeholder": {"zh": "输入消息，回车发送", "en": "Type a message and press Enter"},
    "language": {"zh": "界面语言", "en": "Language"},
    # model, device, memory
    "model": {"zh": "模型", "en": "Model"},
    "switch_model": {"zh": "切换模型", "en": "Switch model"},
    "switching": {"zh": "正在释放当前模型并加载", "en": "Freeing the current model and loading"},
    "switch_refused": {"zh": "未切换模型", "en": "Model not switched"},
    "device": {"zh": "设备", "en": "Device"},
    "kernel": {"zh": "GPTQ 内核", "en": "GPTQ kernel"},
    "memory": {"zh": "模型占用内存", "en": "Model memory"},
    "load_time": {"zh": "加载用时", "en": "Load time"},
    "engine": {"zh": "生成方式", "en": "Generation path"},
    "prefix_cache": {"zh": "跨对话复用的提示缓存", "en": "Prompts kept for reuse"},
    "kv_cache": {"zh": "KV 缓存格式", "en": "KV cache"},
    "split_reason": {"zh": "多卡拆分方式的依据", "en": "Why this split"},
    "kv_cache_pick": {"zh": "KV 缓存格式（更改后重新加载模型）", "en": "KV cache format (reloads the model)"},
    "context": {"zh": "上下文", "en": "context"},
    "used": {"zh": "已用", "en": "used"},
    "free": {"zh": "可用", "en": "free"},
    "of_total": {"zh": "共", "en": "of"},
    "health": {"zh": "环境检查", "en": "Health"},
    "loading": {"zh": "正在加载模型……", "en": "Loading the model…"},
    "building_demo": {
        "zh": "未找到已下载的模型，正在本地构建内置演示模型（约 2 分钟，仅首次）……",
        "en": "No downloaded model found: building the built-in demo model (about 2 minutes, first time only)…",
    },
    "load_failed": {"zh": "模型加载失败", "en": "The model could not be loaded"},
    # where replies come from
    "backend": {"zh": "运行位置", "en": "Runs on"},
    "backend_local": {"zh": "本机", "en": "This computer"},
    "backend_remote": {"zh": "OpenAI 兼容服务器", "en": "OpenAI-compatible server"},
    "server_url": {"zh": "服务器地址（base URL）", "en": "Server address (base URL)"},
    "api_key": {"zh": "API 密钥", "en": "API key"},
    "server": {"zh": "服务器", "en": "Server"},
    "server_hint": {
        "zh": "请输入服务器地址，例如 http://127.0.0.1:8000/v1（本项目的 serve.py、vLLM、SGLang 或 Ollama）。",
        "en": "Enter the server's address, e.g. http://127.0.0.1:8000/v1 (our serve.py, vLLM, SGLang or Ollama).",
    },
    "server_failed": {"zh": "无法使用该服务器", "en": "The server cannot be used"},
    "server_no_models": {"zh": "该服务器没有提供任何模型。", "en": "The server offers no models."},
    # settings
    "settings": {"zh": "生成设置（本对话）", "en": "Generation settings (this chat)"},
    "preset": {"zh": "系统提示词预设", "en": "System prompt preset"},
    "preset_default": {"zh": "通用助手", "en": "Helpful assistant"},
    "preset_concise": {"zh": "简洁回答", "en": "Concise"},
    "preset_coder": {"zh": "编程助手", "en": "Coding assistant"},
    "preset_translator": {"zh": "中英互译", "en": "Chinese ↔ English translator"},
    "preset_math": {"zh": "数学（LaTeX 公式）", "en": "Math tutor (LaTeX)"},
    "preset_chinese": {"zh": "中文助手", "en": "Assistant answering in Chinese"},
    "preset_custom": {"zh": "自定义", "en": "Custom"},
    "system_prompt": {"zh": "系统提示词", "en": "System prompt"},
    "max_new_tokens": {"zh": "最大生成长度（token）", "en": "Max new tokens"},
    "temperature": {"zh": "温度（0 为贪心解码）", "en": "Temperature (0 = greedy)"},
    "top_p": {"zh": "Top-p", "en": "Top-p"},
    "top_k": {"zh": "Top-k（0 为关闭）", "en": "Top-k (0 = off)"},
    "repetition_penalty": {"zh": "重复惩罚", "en": "Repetition penalty"},
    "context_length": {"zh": "上下文长度（token）", "en": "Context length (tokens)"},
    # conversations
    "conversations": {"zh": "对话", "en": "Chats"},
    "new_chat": {"zh": "新对话", "en": "New chat"},
    "search": {"zh": "搜索对话", "en": "Search chats"},
    "no_hits": {"zh": "没有找到", "en": "Nothing found"},
    "found_here": {"zh": "搜索结果在这里", "en": "Found here"},
    "date_this_year": {"zh": "{month}月{day}日 {time}", "en": "{month_name} {day} {time}"},  # a chat's time
    "rename": {"zh": "重命名", "en": "Rename"},
    "title_label": {"zh": "标题", "en": "Title"},
    "save": {"zh": "保存", "en": "Save"},
    "delete": {"zh": "删除", "en": "Delete"},
    "delete_confirm": {"zh": "确认删除此对话", "en": "Delete this chat for good"},
    "export": {"zh": "导出", "en": "Export"},
    "export_md": {"zh": "Markdown 格式", "en": "Markdown"},
    "export_json": {"zh": "JSON 格式", "en": "JSON"},
    "import": {"zh": "导入 JSON 对话", "en": "Import a JSON chat"},
    "imported": {"zh": "已导入", "en": "Imported"},
    "import_failed": {"zh": "无法导入", "en": "Could not import"},
    "missing_chat": {"zh": "该对话已不存在（可能在其他标签页中被删除）。", "en": "That chat no longer exists."},
    "conflict": {
        "zh": "此对话已在另一个标签页中修改，你的消息已另存为新对话。",
        "en": "This chat was changed in another tab; your messages were saved as a new chat.",
    },
    "disk_full": {
        "zh": "磁盘已满，此对话尚未保存。它仍在本页上，腾出空间后会自动保存。",
        "en": "The disk is full: this chat is not saved yet. It stays on this page and is saved once there is room.",
    },
    "not_saved": {
        "zh": "此对话尚未保存（仍在本页上，下一步操作时会再次保存）",
        "en": "This chat is not saved yet (it stays on this page and is saved at your next step)",
    },
    "change_failed": {"zh": "未能更改，对话文件无法写入", "en": "Not changed: the chats file cannot be written"},
    "user_label": {"zh": "用户", "en": "User"},
    "assistant_label": {"zh": "助手", "en": "Assistant"},
    "system_label": {"zh": "系统提示词", "en": "System prompt"},
    # the conversation itself
    "stop": {"zh": "停止", "en": "Stop"},
    "stopped": {"zh": "（已停止）", "en": "(stopped)"},
    "regenerate": {"zh": "重新生成", "en": "Regenerate"},
    "edit": {"zh": "编辑", "en": "Edit"},
    "older_version": {"zh": "上一个版本", "en": "Previous version"},
    "newer_version": {"zh": "下一个版本", "en": "Next version"},
    "edit_label": {"zh": "编辑消息", "en": "Edit your message"},
    "resend": {"zh": "重新发送", "en": "Send"},
    "cancel": {"zh": "取消", "en": "Cancel"},
    "copy": {"zh": "复制", "en": "Copy"},
    "copy_hint": {"zh": "点击右上角图标复制", "en": "Use the icon at the top right to copy"},
    "thinking": {"zh": "思考中……", "en": "Thinking…"},
    "thought": {"zh": "思考过程", "en": "Reasoning"},
    "waiting": {
        "zh": "另一个对话正在生成，请稍候，轮到你时会自动开始。",
        "en": "Another chat is generating; yours starts as soon as it finishes.",
    },
    "too_long": {"zh": "消息过长，未发送", "en": "Message too long, not sent"},
    # attached files
    "page": {"zh": "页", "en": "page"},
    "pages": {"zh": "页", "en": "pages"},
    "preview": {"zh": "预览", "en": "Preview"},
    "read_from": {"zh": "参考了", "en": "Read"},
    "whole": {"zh": "全文", "en": "whole"},
    "page_short": {"zh": "第", "en": "p."},
    "not_sent_file": {
        "zh": "消息未发送（文字已放回输入框）",
        "en": "Message not sent (your text is back in the box)",
    },
    "file_too_large": {"zh": "文件超过大小限制", "en": "File over the size limit"},
    "file_unsupported": {
        "zh": "不支持的文件类型（可附加 PDF、DOCX 和文本文件）",
        "en": "Not a file type that can be attached (PDF, DOCX and text files can)",
    },
    "file_encrypted": {
        "zh": "PDF 已加密，需要密码：请另存一份无密码的副本再附加",
        "en": "Encrypted PDF, it needs a password: save a copy without one and attach that",
    },
    "file_corrupt": {
        "zh": "文件已损坏或格式不符，无法读取",
        "en": "Damaged file, or not what its name says: cannot be read",
    },
    "file_no_text_layer": {
        "zh": "PDF 没有文字层（扫描件？）：请先用 OCR 工具（如 ocrmypdf）识别后再附加",
        "en": "PDF without a text layer (a scan?): run OCR on it first (e.g. ocrmypdf) and attach the result",
    },
    "file_empty": {"zh": "文件中没有文字", "en": "No text in the file"},
    "file_binary": {"zh": "不是文本文件（二进制内容）", "en": "Not a text file (binary content)"},
    "file_zip_bomb": {
        "zh": "DOCX 解压后过大（疑似压缩炸弹），已拒绝",
        "en": "DOCX that unpacks to far too much (a zip bomb?): refused",
    },
    "failed": {"zh": "生成出错", "en": "Generation failed"},
    "left_out": {
        "zh": "超出上下文窗口：上一条回复时模型未看到此消息",
        "en": "Outside the context window: the model did not see this in its last reply",
    },
    # statistics
    "context_meter": {"zh": "上下文", "en": "Context"},
    "tokens": {"zh": "token", "en": "tokens"},
    "dropped": {"zh": "条较早的消息因超出上下文未发送给模型", "en": "earlier messages left out to fit the context"},
    "first_token": {"zh": "首字延迟", "en": "first token"},
    "tokens_per_s": {"zh": "token/秒", "en": "tokens/s"},
    "tokens_per_step": {"zh": "token/步", "en": "tokens/step"},
    "prompt_tokens": {"zh": "提示 token", "en": "prompt tokens"},
    "new_tokens": {"zh": "生成 token", "en": "new tokens"},
    "performance": {"zh": "生成速度（本次会话）", "en": "Speed this session"},
    "reply_number": {"zh": "回复序号", "en": "reply"},
    # access
    "password": {"zh": "密码", "en": "Password"},
    "log_in": {"zh": "登录", "en": "Log in"},
    "password_needed": {"zh": "此页面需要密码。", "en": "This page is protected by a password."},
    "wrong_password": {"zh": "密码错误。", "en": "Wrong password."},
}

# For English dates; a Chinese date names the month by its number ("date_this_year").
MONTH_NAMES = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def pick_language(locale: str | None) -> str:
    """Chinese when the browser asks for it, English otherwise."""
    return "zh" if (locale or "").lower().startswith("zh") else "en"


def t(key: str, language: str) -> str:
    return TEXT[key][language]


def stats_line(stats: dict[str, Any], language: str) -> str:
    """One line under a reply (a `replies.stats_record`): how fast it came and what the model saw."""
    parts = []
    if stats.get("first_token_s") is not None:
        parts.append(f"{t('first_token', language)} {stats['first_token_s']:.2f} s")
    if stats.get("tokens_per_s"):
        parts.append(f"{stats['tokens_per_s']:.1f} {t('tokens_per_s', language)}")
    if stats.get("tokens_per_step", 1) > 1:  # speculative decoding confirmed guesses
        parts.append(f"{stats['tokens_per_step']:.2f} {t('tokens_per_step', language)}")
    parts.append(f"{stats.get('prompt_tokens', 0)} {t('prompt_tokens', language)}")
    parts.append(f"{stats.get('new_tokens', 0)} {t('new_tokens', language)}")
    if stats.get("dropped_messages"):
        parts.append(f"{stats['dropped_messages']} {t('dropped', language)}")
    return " · ".join(parts)


def sources_line(sources: list[dict[str, Any]], language: str) -> str:
    """Under a reply: what of the attached documents it read (`attachments.sources_record`)."""
    read = [
        f"{s['name']} ({t('whole', language) if s['whole'] else t('page_short', language) + ' ' + s['pages']})"
        for s in sources
    ]
    return f"{t('read_from', language)}: {', '.join(read)}"


def chip_line(name: str, pages: int, tokens: int, language: str) -> str:
    """An attached file on its message: name, pages, about how many tokens."""
    return f"{name} · {pages} {t('page' if pages == 1 else 'pages', language)} · ≈{tokens:,} {t('tokens', language)}"


def context_line(used: int, window: int, dropped: int, language: str) -> str:
    """The context meter's words: tokens used of the window, and what was truncated."""
    line = f"{t('context_meter', language)}: {used:,} / {window:,} {t('tokens', language)}"
    return f"{line} · {dropped} {t('dropped', language)}" if dropped else line
