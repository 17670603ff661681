"""Write a transformers causal LM and its tokenizer as one GGUF file (llama.cpp, Ollama) with the `gguf` library.

The library gives the file writer, the tensor-name maps, the tokenizer readers (BpeVocab, SpecialVocab) and the
quantizers. What it leaves to its converter script, and is therefore written here, is small: the architecture's
metadata keys, the token types, and the Q/K row permutation of Llama-family attention weights (GGUF keeps the
original interleaved rotary layout; transformers' GGUF loader undoes exactly this permutation on load).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError

# transformers model_type -> gguf MODEL_ARCH member. Only architectures whose round trip is tested are listed.
ARCHITECTURES = {"llama": "LLAMA"}
QUANT_TYPES = ("q8_0",)


@dataclass(frozen=True)
class GgufPlan:
    """How each tensor is stored: `dtype` for weights (f32/bf16), `quant` for the matrices that can take it."""

    dtype: str = "f32"
    quant: str | None = None

    @property
    def label(self) -> str:
        return self.quant or self.dtype


def write_gguf(model: Any, tokenizer: Any, tokenizer_dir: Path, path: Path, plan: GgufPlan, name: str,
               pre_tokenizer: str | None = None) -> dict[str, int]:
    """Write `model` (a plain transformers causal LM) to `path`; returns the count of tensors per GGUF type."""
    import gguf

    config = model.config
    arch = check_architecture(config)
    writer = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[arch])
    add_model_metadata(writer, config, name, plan)
    add_tokenizer(writer, tokenizer, tokenizer_dir, config.vocab_size, pre_tokenizer)
    counts = add_tensors(writer, model, arch, plan)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return counts


def check_architecture(config: Any) -> Any:
    import gguf

    if config.model_type not in ARCHITECTURES:
        raise TunelabError(
            f"--format gguf: the model's architecture '{config.model_type}' is not supported for GGUF export "
            f"(supported: {', '.join(ARCHITECTURES)}); export --format merged instead"
        )
    rope = getattr(config, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise TunelabError(f"--format gguf: rope scaling '{rope['rope_type']}' is not supported for GGUF export")
    return gguf.MODEL_ARCH[ARCHITECTURES[config.model_type]]


def add_model_metadata(writer: Any, config: Any, name: str, plan: GgufPlan) -> None:
    import gguf

    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    rope = getattr(config, "rope_parameters", None) or {}
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_rope_dimension_count(head_dim)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    if "rope_theta" in rope:
        writer.add_rope_freq_base(rope["rope_theta"])
    writer.add_vocab_size(config.vocab_size)
    file_types = {"f32": gguf.LlamaFileType.ALL_F32, "bf16": gguf.LlamaFileType.MOSTLY_BF16,
                  "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}
    writer.add_file_type(file_types[plan.label])
    if plan.quant:
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def add_tokenizer(writer: Any, tokenizer: Any, folder: Path, vocab_size: int, pre_tokenizer: str | None) -> None:
    """GPT-2-style byte-level BPE tokenizers (SmolLM2, Llama 3, Qwen...) as llama.cpp's `gpt2` tokenizer model."""
    import gguf

    try:
        vocab = gguf.BpeVocab(folder)
    except (FileNotFoundError, ValueError) as error:
        raise TunelabError(
            f"--format gguf: the tokenizer in {folder} is not a byte-level BPE tokenizer that GGUF's 'gpt2' model "
            f"can carry ({error})"
        ) from None
    tokens = [text.encode("utf-8") if isinstance(text, str) else text for text, _, _ in vocab.all_tokens()]
    types = token_types(tokenizer, len(tokens))
    if len(tokens) > vocab_size:
        raise TunelabError(f"--format gguf: the tokenizer has {len(tokens)} tokens, the model only {vocab_size}")
    for index in range(len(tokens), vocab_size):  # embedding rows beyond the tokenizer: unused placeholders
        tokens.append(f"[PAD{index}]".encode())
        types.append(gguf.TokenType.UNUSED)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre_tokenizer or "default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special = gguf.SpecialVocab(folder, load_merges=True, n_vocab=len(tokens))
    # The run's tokenizer decides: its pad token (never EOS, see models/tokenizer.py) and its chat template.
    for kind in ("bos", "eos", "unk", "pad"):
        token_id = getattr(tokenizer, f"{kind}_token_id")
        if token_id is not None:
            special.special_token_ids[kind] = token_id
    special.chat_template = tokenizer.chat_template
    special.add_to_gguf(writer, quiet=True)


def token_types(tokenizer: Any, count: int) -> list[Any]:
    """CONTROL for special tokens and USER_DEFINED for other added ones, so llama.cpp parses them in prompts."""
    import gguf

    types = [gguf.TokenType.NORMAL] * count
    for token_id, token in tokenizer.added_tokens_decoder.items():
        if token_id < count:
            types[token_id] = gguf.TokenType.CONTROL if token.special else gguf.TokenType.USER_DEFINED
    return types


def add_tensors(writer: Any, model: Any, arch: Any, plan: GgufPlan) -> dict[str, int]:
    import gguf

    config = model.config
    names = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
    counts: dict[str, int] = {}
    for hf_name, tensor in model.state_dict().items():
        if hf_name == "lm_head.weight" and config.tie_word_embeddings:
            continue  # tied: llama.cpp reads the output head from token_embd, transformers re-ties on load
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise TunelabError(f"--format gguf: no GGUF name for the model's tensor '{hf_name}'")
        data = tensor.detach().float().cpu().numpy()
        if hf_name.endswith("q_proj.weight"):
            data = permute_rotary(data, config.num_attention_heads, config.num_attention_heads)
        elif hf_name.endswith("k_proj.weight"):
            data = permute_rotary(data, config.num_attention_heads, config.num_key_value_heads)
        qtype = storage_type(data, plan)
        stored = gguf.quants.quantize(data, qtype)
        writer.add_tensor(gguf_name, stored, raw_dtype=qtype)
        counts[qtype.name] = counts.get(qtype.name, 0) + 1
    return counts


def storage_type(data: Any, plan: GgufPlan) -> Any:
    """Norms and other vectors stay F32 (llama.cpp needs them so); matrices take the quant or the dtype."""
    import gguf

    kinds = gguf.GGMLQuantizationType
    if data.ndim < 2:
        return kinds.F32
    if plan.quant == "q8_0":
        block = gguf.GGML_QUANT_SIZES[kinds.Q8_0][0]
        if data.shape[-1] % block == 0:
            return kinds.Q8_0
    return kinds.BF16 if plan.dtype == "bf16" else kinds.F32


def permute_rotary(weights: Any, heads: int, kv_heads: int) -> Any:
    """HF's half-split rotary layout of Q/K rows -> GGUF's interleaved one (the inverse of transformers' loader)."""
    if kv_heads != heads:
        heads = kv_heads
    rows = weights.shape[0]
    return weights.reshape(heads, 2, rows // heads // 2, *weights.shape[1:]).swapaxes(1, 2).reshape(weights.shape)


def source_pre_tokenizer(base_path: Path) -> str | None:
    """The llama.cpp pre-tokenizer name of the GGUF file a base model was converted from, if tunelab converted it.

    llama.cpp picks its pre-tokenizer regex by this name; its converter derives the name from a table of tokenizer
    hashes that the library does not ship, so the name is carried over from the source file where there is one.
    """
    from tunelab.models.builtin import find_package_file
    from tunelab.models.catalog import BUILTIN_MODELS
    from tunelab.models.convert import is_converted, read_manifest

    if not is_converted(base_path):
        return None
    source = read_manifest(base_path).get("source", {})
    candidate: Path | None = Path(source.get("gguf_file") or "")
    if not candidate.is_file():  # a built-in model records its package; the file lives inside it
        builtin = next((model for model in BUILTIN_MODELS.values()
                        if source.get("package") == model.requirement), None)
        candidate = find_package_file(builtin) if builtin else None
    if candidate is None or not candidate.is_file():
        return None
    from gguf import GGUFReader

    field = GGUFReader(candidate).fields.get("tokenizer.ggml.pre")
    return field.contents() if field is not None else None
