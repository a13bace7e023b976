"""The GPTQ-Int4 chat models this app knows by name, with their download sizes and shapes.

`download.py --list` and the memory plan read this table, not the hubs: it answers offline, in milliseconds.
Every figure says where it comes from:

- Shapes come from `gptq_chat.engine.qwen_shapes` (each cited there) unless an entry says otherwise.
- ``published_weight_bytes`` is the sum of the ``*.safetensors`` sizes shown on the model's file page
  (URL in ``size_source``); Hugging Face pages print decimal GB, the ai.gitee.com mirror pages binary
  units (its "1.75 GB" for Qwen1.5-1.8B is 1.75 GiB: the shape computes to 1.876e9 bytes = 1.747 GiB).
  Where no complete file list could be read, the size is computed from the shape
  (`memory_plan.estimated_weight_bytes`), which reproduces every published size below
  within 1 % (tests/test_vram_planner.py checks this).
- ``TOKENIZER_AND_CONFIG_BYTES``: tokenizer.json 7.03 MB + vocab.json 2.78 MB + merges.txt 1.67 MB + a few
  small JSON files, as listed on huggingface.co/Qwen/Qwen2.5-7B-Instruct-GPTQ-Int4/tree/6e497db (the same
  files in every Qwen1.5/Qwen2/Qwen2.5 release).
- Computed sizes agree with what our random-weight writer produces for the same shapes: 41.3 GB written for the
  Qwen1.5-72B shape (computed here: 41.27 GB).
- Hub ids: `qwen/Qwen1.5-7B-Chat-GPTQ-Int4` (as the original tutorial spells it) for ModelScope's Qwen1.5 (and
  Qwen2) releases, `Qwen/...` for Qwen2.5 and on Hugging Face; ids are matched without regard to case, since the
  spelling on ModelScope was not checked against the hub.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, replace

from gptq_chat.engine.qwen_shapes import QWEN_SHAPES
from gptq_chat.engine.shape import GPTQSettings, ModelShape
from gptq_chat.loading.checkpoint import plain_name
from gptq_chat.loading.memory_plan import total_weight_bytes

GB = 1000**3
GIB = 1024**3
MIB = 1024**2
TOKENIZER_AND_CONFIG_BYTES = 11_600_000

COMPUTED = "computed from the shape"
HF = "https://huggingface.co/"
GITEE = "https://ai.gitee.com/hf-models/"


@dataclass(frozen=True)
class CatalogEntry:
    """One downloadable checkpoint: where it lives on each hub and how big it is."""

    name: str  # the repository name, the same on both hubs
    modelscope_id: str
    hf_id: str
    shape_key: str  # key of qwen_shapes.QWEN_SHAPES
    published_weight_bytes: int | None = None
    size_source: str = COMPUTED
    intermediate_size: int | None = None  # where the GPTQ release pads the float model's MLP

    @property
    def shape(self) -> ModelShape:
        """The tensor shapes of the GPTQ release (its padded MLP, where Qwen padded it)."""
        shape = QWEN_SHAPES[self.shape_key]
        return replace(shape, intermediate_size=self.intermediate_size) if self.intermediate_size else shape

    @property
    def gptq(self) -> GPTQSettings:
        """Qwen's GPTQ-Int4 releases: 4-bit, groups of 128, symmetric, no act-order."""
        return GPTQSettings()

    @property
    def weight_bytes(self) -> int | None:
        """The published size, where known; the memory plan computes the rest from the shape."""
        return self.published_weight_bytes

    @property
    def org(self) -> str:
        """The folder under the models home: the Hugging Face spelling, so both hubs land in one place."""
        return self.hf_id.split("/")[0]

    @property
    def key(self) -> str:
        """A short handle for the command line, e.g. ``qwen1.5-7b``."""
        return self.name.lower().split("-chat")[0].split("-instruct")[0]

    @property
    def download_bytes(self) -> int:
        """Weights (published where known, else computed) plus the tokenizer and config files."""
        return total_weight_bytes(self) + TOKENIZER_AND_CONFIG_BYTES

    @property
    def download_size_is_published(self) -> bool:
        return self.published_weight_bytes is not None

    @property
    def draft(self) -> CatalogEntry | None:
        """The family's smallest release, a draft model for speculative decoding (the same tokenizer); None for
        that release itself."""
        family = self.name.split("-")[0]
        smallest = next(e for e in KNOWN_MODELS if e.name.split("-")[0] == family and e.shape_key.endswith("0.5b"))
        return None if smallest is self else smallest


def _qwen15(size: str, published: int | None = None, source: str = "", intermediate: int | None = None) -> CatalogEntry:
    name = f"Qwen1.5-{size}-Chat-GPTQ-Int4"
    shape_key = f"qwen1.5-{size.lower()}"
    return CatalogEntry(name, f"qwen/{name}", f"Qwen/{name}", shape_key, published, source or COMPUTED, intermediate)


def _qwen2(size: str, published: int | None = None, source: str = "") -> CatalogEntry:
    # Qwen2 and Qwen2.5 share each size's shape: checked for 0.5B (huggingface.co/Ramikan-BR/Qwen2-0.5B-v18,
    # from unsloth/qwen2-0.5b), 1.5B (huggingface.co/unsloth/Qwen2-1.5B-Instruct config.json) and 7B (the
    # published GPTQ-Int4 size below equals the Qwen2.5-7B shape's computed size); 72B is assumed.
    name = f"Qwen2-{size}-Instruct-GPTQ-Int4"
    return CatalogEntry(name, f"qwen/{name}", f"Qwen/{name}", f"qwen2.5-{size.lower()}", published, source or COMPUTED)


def _qwen25(size: str, published: int | None = None, source: str = "") -> CatalogEntry:
    name = f"Qwen2.5-{size}-Instruct-GPTQ-Int4"
    return CatalogEntry(name, f"Qwen/{name}", f"Qwen/{name}", f"qwen2.5-{size.lower()}", published, source or COMPUTED)


# Qwen re-uploaded Qwen1.5-14B-Chat-GPTQ-Int4 ("update weights", commit 1b183a8): its shards grew from
# 3.98 + 3.99 + 1.71 GB to 3.98 + 3.97 + 1.93 GB. The shape with intermediate_size 13696 (the float
# model's) computes to 9.67 GB, the first upload; padding it to 14336 (= 112 groups of 128) computes to
# 9.87 GB, the current one. The config.json itself could not be read here: inferred, not verified.
QWEN15_14B_GPTQ_INTERMEDIATE = 14336

KNOWN_MODELS: tuple[CatalogEntry, ...] = (
    _qwen15(
        "0.5B",
        published=int(450.99 * MIB),
        source=GITEE + "Qwen/Qwen1.5-0.5B-Chat-GPTQ-Int4/blob/main/model.safetensors (450.99 MiB)",
    ),
    _qwen15(
        "1.8B",
        published=int(1.75 * GIB),
        source=GITEE + "Qwen/Qwen1.5-1.8B-Chat-GPTQ-Int4/blob/main/model.safetensors (1.75 GiB)",
    ),
    _qwen15("4B"),
    _qwen15(
        "7B",
        published=int((3.99 + 1.87) * GB),
        source=HF + "Qwen/Qwen1.5-7B-Chat-GPTQ-Int4/tree/b9f5699 (3.99 + 1.87 GB)",
    ),
    _qwen15(
        "14B",
        intermediate=QWEN15_14B_GPTQ_INTERMEDIATE,
        published=int((3.98 + 3.97 + 1.93) * GB),
        source=HF + "Qwen/Qwen1.5-14B-Chat-GPTQ-Int4/tree/1b183a8 (3.98 + 3.97 + 1.93 GB)",
    ),
    _qwen15("32B"),
    _qwen15("72B"),
    _qwen2("0.5B"),
    _qwen2("1.5B"),
    _qwen2(
        "7B",
        published=int((3.69 + 1.50) * GIB),
        source=GITEE + "Qwen/Qwen2-7B-Instruct-GPTQ-Int4/tree/main (3.69 + 1.50 GiB)",
    ),
    _qwen2("72B"),
    _qwen25("0.5B"),
    _qwen25("1.5B"),
    _qwen25("3B"),
    _qwen25(
        "7B",
        published=int((4.00 + 1.58) * GB),
        source=HF + "Qwen/Qwen2.5-7B-Instruct-GPTQ-Int4/tree/6e497db (4 + 1.58 GB)",
    ),
    _qwen25(
        "14B",
        published=int((3.99 + 3.97 + 2.02) * GB),
        source=HF + "Qwen/Qwen2.5-14B-Instruct-GPTQ-Int4/tree/430ce09 (3.99 + 3.97 + 2.02 GB)",
    ),
    _qwen25(
        "32B",
        published=int((3.95 + 3.98 + 3.95 + 3.98 + 3.48) * GB),
        source=HF + "Qwen/Qwen2.5-32B-Instruct-GPTQ-Int4/tree/c83e67d (3.95 + 3.98 + 3.95 + 3.98 + 3.48 GB)",
    ),
    _qwen25("72B"),
)

DEFAULT_MODEL = "qwen/Qwen1.5-7B-Chat-GPTQ-Int4"


def _norm(text: str) -> str:
    return plain_name(text.strip().strip("/")).lower()


def find(model: str) -> CatalogEntry | None:
    """The entry for a hub id (either hub, any case, either name spelling), a bare name or a short key."""
    wanted = _norm(model)
    for entry in KNOWN_MODELS:
        names = {entry.key, entry.name.lower(), entry.modelscope_id.lower(), entry.hf_id.lower()}
        if wanted in names:
            return entry
    return None


def suggest(model: str, limit: int = 3) -> list[str]:
    """Known ids that look like a mistyped `model`, for the "unknown model" message."""
    ids = [entry.name for entry in KNOWN_MODELS]
    wanted = plain_name(model.split("/")[-1])
    return difflib.get_close_matches(wanted, ids, n=limit, cutoff=0.6)
