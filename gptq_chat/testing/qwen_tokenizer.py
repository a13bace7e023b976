"""The real Qwen1.5 tokenizer, built offline from the BPE ranks that ship inside the `dashscope` wheel.

Why this exists: the Hugging Face hub and ModelScope cannot be reached from here, yet tests and benchmarks need
the exact token ids a Qwen1.5/Qwen2/Qwen2.5 GPTQ checkpoint was trained with (prompt lengths, stop tokens,
ChatML framing).  `dashscope` (on PyPI, so reachable) bundles `resources/qwen.tiktoken`: the 151,643 byte-level
BPE ranks those models share.  From them we rebuild what `AutoTokenizer.from_pretrained("Qwen/Qwen1.5-*-Chat")`
gives: the same vocabulary, one merge per non-byte token (151,387, the count the published `merges.txt` has),
Qwen's pre-tokenizer regex, NFC normalization, the three special tokens at ids 151643-151645 and the Qwen1.5
ChatML chat template.  `build_qwen25_tokenizer` adds the 19 tokens Qwen2.5 added after them (its tool-call tags
among them) for a Qwen2.5 chat template.  `save_qwen_tokenizer` writes the Qwen1.5 one to a folder so random-weight
Qwen-shaped checkpoints get a real tokenizer too.

`dashscope` is located with `importlib.util.find_spec` and never imported: CI installs it with `--no-deps`, so
its own imports may fail.
"""

from __future__ import annotations

import base64
import functools
import importlib.util
from pathlib import Path

from tokenizers import AddedToken, Regex, pre_tokenizers
from transformers import PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import bytes_to_unicode
from transformers.models.qwen2.tokenization_qwen2 import Qwen2Tokenizer

__all__ = [
    "ENDOFTEXT",
    "IM_END",
    "IM_START",
    "MODEL_MAX_LENGTH",
    "NUM_BPE_TOKENS",
    "QWEN15_CHAT_TEMPLATE",
    "QWEN25_ADDED_TOKENS",
    "QWEN_PRETOKENIZE_REGEX",
    "SPECIAL_TOKEN_IDS",
    "build_qwen25_tokenizer",
    "build_qwen_tokenizer",
    "load_qwen_bpe_ranks",
    "qwen_bpe_merges",
    "qwen_tiktoken_path",
    "save_qwen_tokenizer",
]

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
# Qwen1.5 (and Qwen2) tokenizers have exactly these three added tokens, right after the BPE ranks; the
# `<|extra_N|>` reserved tokens of Qwen(1)'s tiktoken tokenizer are not in the Qwen1.5 vocabulary, and the
# `<|object_ref_start|>`... tokens from 151646 on only arrived with Qwen2.5.
SPECIAL_TOKEN_IDS: dict[str, int] = {ENDOFTEXT: 151643, IM_START: 151644, IM_END: 151645}
# The tokens Qwen2.5 added after those (id, special): `added_tokens_decoder` of Qwen/Qwen2.5-7B-Instruct's
# tokenizer_config.json; torchtune's `QWEN2_5_SPECIAL_TOKENS` lists the same ids.  The vision and box markers are
# special; the tool-call tags and the code-completion markers are not, so `split_special_tokens=True` leaves them
# whole in text.
QWEN25_ADDED_TOKENS: dict[str, tuple[int, bool]] = {
    "<|object_ref_start|>": (151646, True),
    "<|object_ref_end|>": (151647, True),
    "<|box_start|>": (151648, True),
    "<|box_end|>": (151649, True),
    "<|quad_start|>": (151650, True),
    "<|quad_end|>": (151651, True),
    "<|vision_start|>": (151652, True),
    "<|vision_end|>": (151653, True),
    "<|vision_pad|>": (151654, True),
    "<|image_pad|>": (151655, True),
    "<|video_pad|>": (151656, True),
    "<tool_call>": (151657, False),
    "</tool_call>": (151658, False),
    "<|fim_prefix|>": (151659, False),
    "<|fim_middle|>": (151660, False),
    "<|fim_suffix|>": (151661, False),
    "<|fim_pad|>": (151662, False),
    "<|repo_name|>": (151663, False),
    "<|file_sep|>": (151664, False),
}
NUM_BPE_TOKENS = 151643
MODEL_MAX_LENGTH = 32768

# transformers' `Qwen2Tokenizer` splits text with this before BPE (the same pattern Qwen(1)'s tiktoken
# tokenizer used): like cl100k but digits are split one by one (`\p{N}`, not `\p{N}{1,3}`).
QWEN_PRETOKENIZE_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# `chat_template` of Qwen/Qwen1.5-*-Chat tokenizer_config.json (e.g. Qwen1.5-0.5B-Chat snapshot f82bd369,
# Qwen1.5-72B 93bac0d1): ChatML, with a default system turn (no final period) when the first message is not one.
QWEN15_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant<|im_end|>\n' }}"
    "{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def qwen_tiktoken_path() -> Path:
    """Where the installed `dashscope` keeps `qwen.tiktoken` (found without importing the package)."""
    spec = importlib.util.find_spec("dashscope")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("the Qwen BPE ranks come from the `dashscope` package: pip install --no-deps dashscope")
    path = Path(spec.origin).parent / "resources" / "qwen.tiktoken"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from this dashscope install")
    return path


@functools.cache
def load_qwen_bpe_ranks() -> dict[bytes, int]:
    """Token bytes -> rank (= token id) for the 151,643 BPE tokens; cached, treat as read-only."""
    ranks: dict[bytes, int] = {}
    with qwen_tiktoken_path().open("rb") as f:
        for line in f:
            if line.strip():
                token, rank = line.split()
                ranks[base64.b64decode(token)] = int(rank)
    if len(ranks) != NUM_BPE_TOKENS or sorted(ranks.values()) != list(range(NUM_BPE_TOKENS)):
        raise ValueError(f"unexpected qwen.tiktoken: {len(ranks)} tokens, ranks not 0..{NUM_BPE_TOKENS - 1}")
    return ranks


def _bpe_parts(token: bytes, ranks: dict[bytes, int], max_rank: int) -> list[bytes]:
    """Rank-based BPE of `token`'s bytes (tiktoken's rule), merging only into tokens ranked below `max_rank`."""
    parts = [token[i : i + 1] for i in range(len(token))]
    pair_ranks = [ranks.get(parts[i] + parts[i + 1], max_rank) for i in range(len(parts) - 1)]
    while pair_ranks:
        best = min(pair_ranks)
        if best >= max_rank:
            break
        i = pair_ranks.index(best)
        parts[i : i + 2] = [parts[i] + parts[i + 1]]
        del pair_ranks[i]
        if i > 0:
            pair_ranks[i - 1] = ranks.get(parts[i - 1] + parts[i], max_rank)
        if i < len(pair_ranks):
            pair_ranks[i] = ranks.get(parts[i] + parts[i + 1], max_rank)
    return parts


@functools.cache
def qwen_bpe_merges() -> tuple[tuple[bytes, bytes], ...]:
    """The merge that creates each non-byte token, in rank order (cached).

    tiktoken ranks imply the merges: BPE over a token's own bytes, stopped just before its rank, ends in the
    two pieces the token was merged from.  This yields one merge per token (151,387, the count of Qwen's
    merges.txt), unlike transformers' `TikTokenConverter`, which emits every valid split of every token and
    relies on `ignore_merges=True`.  When only one split has both halves ranked lower it is the answer and the
    BPE run is skipped (about half the tokens); this takes 1-2 s in all.
    """
    ranks = load_qwen_bpe_ranks()
    merges: list[tuple[bytes, bytes]] = []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        if len(token) == 1:
            continue
        split: tuple[bytes, bytes] | None = None
        for i in range(1, len(token)):
            if ranks.get(token[:i], rank) < rank and ranks.get(token[i:], rank) < rank:
                if split is not None:  # several candidates: let BPE pick
                    parts = _bpe_parts(token, ranks, rank)
                    split = (parts[0], parts[1]) if len(parts) == 2 else None
                    break
                split = (token[:i], token[i:])
        if split is None:
            raise ValueError(f"token {token!r} (rank {rank}) is not the merge of two lower-ranked tokens")
        merges.append(split)
    return tuple(merges)


@functools.cache
def _vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Ranks and merges in the GPT-2 byte-to-unicode spelling that `tokenizers`' byte-level BPE uses."""
    spelling = bytes_to_unicode()  # byte value -> printable stand-in character

    def spell(token: bytes) -> str:
        return token.decode("latin-1").translate(spelling)

    vocab = {spell(token): rank for token, rank in load_qwen_bpe_ranks().items()}
    merges = [(spell(left), spell(right)) for left, right in qwen_bpe_merges()]
    return vocab, merges


def _new_tokenizer(chat_template: str, extra_tokens: dict[str, tuple[int, bool]]) -> Qwen2Tokenizer:
    """A new instance from the cached vocabulary and merges (~0.3 s; a deep copy of a built one takes longer)."""
    vocab, merges = _vocab_and_merges()
    tokens = {content: (token_id, True) for content, token_id in SPECIAL_TOKEN_IDS.items()} | extra_tokens
    added = {
        token_id: AddedToken(content, special=special, normalized=False, lstrip=False, rstrip=False)
        for content, (token_id, special) in tokens.items()
    }
    named_specials = [content for content, (_, special) in tokens.items() if special and content != ENDOFTEXT]
    # Qwen2Tokenizer (what transformers 5 loads Qwen1.5 checkpoints as; Qwen2TokenizerFast is an alias) adds
    # the NFC normalizer, the regex split, byte-level pre-tokenizer and decoder.  The keyword arguments mirror
    # Qwen1.5-Chat's tokenizer_config.json.  It keeps the dict and list it is given, hence the copies.
    tokenizer = Qwen2Tokenizer(
        vocab=dict(vocab),
        merges=list(merges),
        added_tokens_decoder=added,
        additional_special_tokens=named_specials,
        bos_token=None,
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        unk_token=None,
        add_prefix_space=False,
        chat_template=chat_template,
        clean_up_tokenization_spaces=False,
        errors="replace",
        model_max_length=MODEL_MAX_LENGTH,
        split_special_tokens=False,
    )
    # Pin the split pattern rather than trust the class default to stay Qwen1.5's across transformers releases.
    tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    for content, (token_id, _) in tokens.items():
        if tokenizer.convert_tokens_to_ids(content) != token_id:
            raise RuntimeError(f"{content} got id {tokenizer.convert_tokens_to_ids(content)}, not {token_id}")
    return tokenizer


def build_qwen_tokenizer(chat_template: str = QWEN15_CHAT_TEMPLATE) -> PreTrainedTokenizerFast:
    """A fresh Qwen1.5 chat tokenizer (eos `<|im_end|>`, pad `<|endoftext|>`, no BOS), safe to mutate.

    The first call per process takes a few seconds (reading the ranks, deriving merges, both cached); later
    calls only build a new instance from the cache.
    """
    return _new_tokenizer(chat_template, {})


def build_qwen25_tokenizer(chat_template: str) -> PreTrainedTokenizerFast:
    """A fresh Qwen2.5 tokenizer: the Qwen1.5 one with Qwen2.5's 19 added tokens, for a Qwen2.5 chat template."""
    return _new_tokenizer(chat_template, QWEN25_ADDED_TOKENS)


def save_qwen_tokenizer(directory: Path, *, chat_template: str = QWEN15_CHAT_TEMPLATE) -> None:
    """Write the tokenizer so `AutoTokenizer.from_pretrained(directory)` loads an identical one."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    _new_tokenizer(chat_template, {}).save_pretrained(directory)
