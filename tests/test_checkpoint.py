"""Checkpoint validation: every broken folder fails fast with a message and a fix, and names resolve."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from gptq_chat.loading.checkpoint import CheckpointError, find_checkpoint, inspect_checkpoint, resolve_model_dir
from gptq_chat.models import store


@pytest.fixture
def checkpoint_copy(tiny_gptq_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny checkpoint that a test may damage."""
    return Path(shutil.copytree(tiny_gptq_dir, tmp_path / "Qwen-tiny-GPTQ-Int4"))


def edit_config(folder: Path, change) -> None:
    config = json.loads((folder / "config.json").read_text())
    change(config)
    (folder / "config.json").write_text(json.dumps(config))


def test_valid_checkpoint_is_described(checkpoint_copy: Path) -> None:
    info = inspect_checkpoint(checkpoint_copy)
    assert info.gptq.bits == 4 and info.gptq.group_size == 128 and info.gptq.sym and not info.gptq.desc_act
    assert info.model_type == "qwen2"
    assert info.weight_bytes == sum(f.stat().st_size for f in info.weight_files) > 0
    shape = info.shape  # the tiny test shape: 2 layers, 2 KV heads of 256 / 4 = 64
    assert (shape.num_layers, shape.num_kv_heads, shape.head_dim) == (2, 2, 64)
    assert shape.kv_bytes_per_token == 2 * 2 * 2 * 64 * 2  # K and V, layers, KV heads, head_dim, fp16


def test_a_head_dim_the_config_states_wins_over_hidden_size_over_heads(checkpoint_copy: Path) -> None:
    """Some models (Qwen3, Gemma) give head_dim explicitly, and hidden / heads would be wrong for them."""
    edit_config(checkpoint_copy, lambda c: c.update(head_dim=128))
    shape = inspect_checkpoint(checkpoint_copy).shape
    assert shape.head_dim == 128 and shape.kv_dim == 2 * 128 and shape.q_dim == 4 * 128


def test_missing_folder_names_the_places_tried_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError) as error:
        find_checkpoint(tmp_path / "nowhere")
    assert "nowhere" in str(error.value)
    assert "python download.py" in error.value.fix


def test_folder_without_config_is_not_a_model(checkpoint_copy: Path) -> None:
    (checkpoint_copy / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"no config\.json"):
        inspect_checkpoint(checkpoint_copy)


def test_unquantized_model_is_refused_with_the_gptq_variant_named(checkpoint_copy: Path) -> None:
    edit_config(checkpoint_copy, lambda c: c.pop("quantization_config"))
    (checkpoint_copy / "quantize_config.json").unlink(missing_ok=True)
    with pytest.raises(CheckpointError, match="not a quantized checkpoint") as error:
        inspect_checkpoint(checkpoint_copy)
    assert "GPTQ-Int4" in error.value.fix


def test_other_quantization_method_is_refused(checkpoint_copy: Path) -> None:
    edit_config(checkpoint_copy, lambda c: c["quantization_config"].update(quant_method="awq"))
    with pytest.raises(CheckpointError, match="'awq', not GPTQ"):
        inspect_checkpoint(checkpoint_copy)


@pytest.mark.parametrize("bits", [2, 3])
def test_unsupported_bits_are_refused(checkpoint_copy: Path, bits: int) -> None:
    edit_config(checkpoint_copy, lambda c: c["quantization_config"].update(bits=bits))
    with pytest.raises(CheckpointError, match=f"{bits}-bit GPTQ"):
        inspect_checkpoint(checkpoint_copy)


def test_missing_tokenizer_is_reported(checkpoint_copy: Path) -> None:
    for name in ("tokenizer.json", "tokenizer.model", "vocab.json", "qwen.tiktoken"):
        (checkpoint_copy / name).unlink(missing_ok=True)
    with pytest.raises(CheckpointError, match="no tokenizer"):
        inspect_checkpoint(checkpoint_copy)


def test_missing_weights_are_reported(checkpoint_copy: Path) -> None:
    for path in checkpoint_copy.glob("*.safetensors*"):
        path.unlink()
    with pytest.raises(CheckpointError, match="No model weights"):
        inspect_checkpoint(checkpoint_copy)


@pytest.mark.parametrize("origin", ["copied by hand", "downloaded"])
def test_truncated_safetensors_is_reported_with_byte_counts_and_the_repair_that_fits(
    checkpoint_copy: Path, origin: str
) -> None:
    """A folder download.py fetched is repaired by resuming its download; one copied by hand has no download to
    resume (a `python download.py FOLDER-NAME` would name a hub model that does not exist): copy it again."""
    if origin == "downloaded":
        store.write_manifest(checkpoint_copy, {"model_id": "Qwen/Tiny-GPTQ-Int4"}, {})
    weights = next(checkpoint_copy.glob("*.safetensors"))
    size = weights.stat().st_size
    with weights.open("r+b") as handle:
        handle.truncate(size - 1000)
    with pytest.raises(CheckpointError, match="truncated") as error:
        inspect_checkpoint(checkpoint_copy)
    assert f"{size - 1000:,} of {size:,} bytes" in error.value.problem
    if origin == "downloaded":
        assert error.value.fix.startswith("resume the download: `python download.py Qwen/Tiny-GPTQ-Int4`")
    else:
        assert error.value.fix.startswith(f"{weights.name} should be {size:,} bytes")
        assert "copy it again" in error.value.fix and checkpoint_copy.name not in error.value.fix


def test_damaged_safetensors_header_is_reported(checkpoint_copy: Path) -> None:
    weights = next(checkpoint_copy.glob("*.safetensors"))
    weights.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(CheckpointError, match="damaged"):
        inspect_checkpoint(checkpoint_copy)


def test_modelscope_folder_is_found_by_the_dotted_name(checkpoint_copy: Path) -> None:
    escaped = checkpoint_copy.with_name("Qwen1___5-7B-Chat-GPTQ-Int4")
    checkpoint_copy.rename(escaped)
    assert resolve_model_dir(escaped.with_name("Qwen1.5-7B-Chat-GPTQ-Int4")) == escaped.resolve()
    assert resolve_model_dir(escaped) == escaped.resolve()


def test_dotted_folder_is_found_by_the_modelscope_name(checkpoint_copy: Path) -> None:
    dotted = checkpoint_copy.rename(checkpoint_copy.with_name("Qwen1.5-7B-Chat-GPTQ-Int4"))
    assert resolve_model_dir(dotted.with_name("Qwen1___5-7B-Chat-GPTQ-Int4")) == dotted.resolve()


def test_model_id_is_found_under_the_models_home(
    checkpoint_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    (home / "qwen").mkdir(parents=True)
    shutil.move(checkpoint_copy, home / "qwen" / "Qwen1___5-7B-Chat-GPTQ-Int4")
    monkeypatch.setenv("GPTQ_CHAT_HOME", str(home))
    info = find_checkpoint("qwen/Qwen1.5-7B-Chat-GPTQ-Int4")
    assert info.path == (home / "qwen" / "Qwen1___5-7B-Chat-GPTQ-Int4").resolve()
