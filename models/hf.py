"""Hugging Face ``config.json`` <-> `TransformerConfig`, family by family, never approximately.

`read_hf` maps the fields of a ``config.json`` (a path, or the dict already loaded) by its
``model_type`` (or, without one, its ``architectures``) with an explicit table per family. A
field that changes the shape and is not understood raises ``ValueError`` naming it; fields that
change nothing we count (dropout, initialiser ranges, token ids, rope scaling, ...) are accepted
and returned in `HFImport.ignored`, so nothing the user gave disappears unseen.

`to_hf` writes the inverse for the families whose fields we can state, and checks that
`read_hf` gives the same config back before returning it.

The per-family meaning of each field follows the transformers modeling code of that family
(``transformers/models/<family>/modeling_<family>.py`` and ``configuration_<family>.py``).

>>> imp = read_hf({"model_type": "llama", "vocab_size": 32000, "hidden_size": 4096,
...     "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
...     "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "use_cache": True})
>>> imp.family, imp.config.mlp, imp.ignored
('llama', 'swiglu', ('use_cache',))
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Mapping
from typing import Any

from models.config import TransformerConfig

#: Fields that change nothing this project counts, in any family: dropout, initialisation,
#: token ids, dtypes, caching, bookkeeping, RoPE scaling (same shapes, other frequencies),
#: attention scale constants, tokenizer and generation settings.
IGNORABLE = frozenset("""
    _name_or_path architectures auto_map bos_token_id eos_token_id pad_token_id sep_token_id
    decoder_start_token_id torch_dtype dtype transformers_version use_cache initializer_range
    initializer_factor attention_dropout hidden_dropout embd_pdrop resid_pdrop attn_pdrop
    summary_first_dropout summary_activation summary_proj_to_labels summary_type summary_use_proj
    attention_probs_dropout_prob hidden_dropout_prob classifier_dropout embedding_dropout
    rope_scaling rope_type rope_parameters original_max_position_embeddings task_specific_params
    scale_attn_weights scale_attn_by_inverse_layer_idx reorder_and_upcast_attn
    use_return_dict return_dict output_hidden_states output_attentions tokenizer_class
    pretraining_tp cache_implementation query_pre_attn_scalar rope_local_base_freq
    attn_implementation _attn_implementation use_flash_attn use_memory_efficient_attention
    quantization_config is_decoder model_max_length bad_words_ids gradient_checkpointing
    n_ctx use_bidirectional_attention final_norm_dropout mlp_dropout
    id2label label2id problem_type tie_encoder_decoder torchscript keys_to_ignore_at_inference
    qk_layernorm_dropout rotary_emb_dropout
""".split())

#: model_type of each family, and the ``architectures`` class names that identify it.
ARCHITECTURES = {
    "GPT2LMHeadModel": "gpt2", "GPTNeoXForCausalLM": "gpt_neox", "GPTJForCausalLM": "gptj",
    "LlamaForCausalLM": "llama", "MistralForCausalLM": "mistral", "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3", "GemmaForCausalLM": "gemma", "Gemma2ForCausalLM": "gemma2",
    "Gemma3ForCausalLM": "gemma3_text", "Phi3ForCausalLM": "phi3", "Olmo2ForCausalLM": "olmo2",
    "FalconForCausalLM": "falcon", "Starcoder2ForCausalLM": "starcoder2",
    "NemotronForCausalLM": "nemotron", "MixtralForCausalLM": "mixtral", "Qwen3MoeForCausalLM": "qwen3_moe",
    "OlmoeForCausalLM": "olmoe", "DeepseekV2ForCausalLM": "deepseek_v2", "DeepseekV3ForCausalLM": "deepseek_v3",
}
#: Other names of the same families.
ALIASES = {"RefinedWebModel": "falcon", "RefinedWeb": "falcon", "gemma3": "gemma3_text"}


@dataclasses.dataclass(frozen=True)
class HFImport:
    """What `read_hf` understood: the config, the family, which HF field gave each of our
    fields (``mapped``: our field -> the HF key or the family's rule), and the HF fields that
    were accepted but change nothing countable (``ignored``)."""

    config: TransformerConfig
    family: str
    mapped: dict[str, str]
    ignored: tuple[str, ...]

    def to_dict(self) -> dict:
        return {"family": self.family, "config": dataclasses.asdict(self.config),
                "mapped": dict(self.mapped), "ignored": list(self.ignored)}


class _Reader:
    """Reads keys of one config dict, remembering which were used."""

    def __init__(self, data: Mapping[str, Any], family: str):
        self.data, self.family = data, family
        self.used: set[str] = set()
        self.mapped: dict[str, str] = {}
        self.fields: dict[str, Any] = {}
        self.ignorable: set[str] = set()

    def get(self, key: str | tuple[str, ...], default: Any = ...,):
        keys = (key,) if isinstance(key, str) else key
        for k in keys:
            if k in self.data:
                self.used.add(k)
                return self.data[k]
        if default is ...:
            raise ValueError(f"{self.family} config.json: required field {keys[0]!r} is missing")
        return default

    def ignore(self, key: str) -> None:
        """A family-specific field that changes nothing countable (listed as ignored)."""
        self.ignorable.add(key)

    def has(self, key: str) -> bool:
        return key in self.data

    def set(self, field: str, value: Any, source: str) -> None:
        self.fields[field] = value
        self.mapped[field] = source

    def take(self, field: str, key: str | tuple[str, ...], default: Any = ..., conv: Callable = lambda v: v):
        """Our ``field`` from HF ``key`` (first present of a tuple of names)."""
        keys = (key,) if isinstance(key, str) else key
        present = next((k for k in keys if k in self.data), None)
        value = self.get(keys, default)
        if value is None and default is not ... and present is not None:
            value = default
        self.set(field, conv(value), present if present is not None else f"{keys[0]} (absent: default)")
        return self.fields[field]

    def reject(self, key: str, bad: Callable[[Any], bool], why: str) -> None:
        if key in self.data:
            self.used.add(key)
            if bad(self.data[key]):
                raise ValueError(f"{self.family} config.json: {key}={self.data[key]!r} {why}")


def _int(name):
    def conv(v):
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"config.json: {name}={v!r} must be an integer")
        return v
    return conv


def _activation(r: _Reader, key, gated: bool, default=...):
    """The MLP kind from an HF activation name (transformers.activations.ACT2FN)."""
    name = r.get(key, default)
    if name is None and default is not ...:
        name = default
    source = key if isinstance(key, str) else next((k for k in key if k in r.data), key[0])
    tanh = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast", "gelu_python_tanh")
    if gated:
        table = {"silu": "swiglu", "swish": "swiglu", **dict.fromkeys(tanh, "geglu")}
    else:
        table = {"gelu": "gelu_exact", "relu2": "relu2", **dict.fromkeys(tanh, "gelu")}
    if name not in table:
        kind = "gated" if gated else "two-matrix"
        raise ValueError(f"{r.family} config.json: {source}={name!r}: activation not supported for the "
                         f"{kind} MLP of this family; supported: {', '.join(sorted(table))}")
    r.set("mlp", table[name], source)


def _llama_sizes(r: _Reader) -> None:
    """The six sizes under LlamaConfig's names (Llama, its descendants, GPT-NeoX)."""
    r.take("vocab_size", "vocab_size", conv=_int("vocab_size"))
    r.take("d_model", "hidden_size", conv=_int("hidden_size"))
    r.take("n_layers", "num_hidden_layers", conv=_int("num_hidden_layers"))
    r.take("n_heads", "num_attention_heads", conv=_int("num_attention_heads"))
    r.take("d_ff", "intermediate_size", conv=_int("intermediate_size"))
    r.take("seq_len", "max_position_embeddings", conv=_int("max_position_embeddings"))


def _common_llama(r: _Reader, *, tied_default: bool, gated: bool = True, act_key=("hidden_act",),
                  act_default: Any = "silu", eps_key="rms_norm_eps") -> None:
    """The fields Llama and its descendants share (LlamaConfig's names)."""
    _llama_sizes(r)
    kv = r.get("num_key_value_heads", None)
    r.set("n_kv_heads", None if kv is None or kv == r.fields["n_heads"] else _int("num_key_value_heads")(kv),
          "num_key_value_heads")
    hd = r.get("head_dim", None)  # kept as given (None: hidden_size // num_attention_heads)
    r.set("head_dim", None if hd is None else _int("head_dim")(hd), "head_dim")
    r.take("tied_embeddings", "tie_word_embeddings", tied_default, conv=bool)
    r.take("norm_eps", eps_key, 1e-6, conv=float)
    r.take("rope_theta", "rope_theta", 10000.0, conv=float)
    _activation(r, act_key, gated, act_default)
    r.set("norm", "rmsnorm", "(family: RMSNorm)")
    r.set("position", "rope", "(family: RoPE)")
    r.set("bias", False, "(family: no biases)")


def _no_sliding(r: _Reader) -> None:
    """Qwen2/Qwen3: sliding_window only acts with use_sliding_window (per-layer by max_window_layers)."""
    if r.get("use_sliding_window", False):
        raise ValueError(f"{r.family} config.json: use_sliding_window=true (windowed layers from "
                         "max_window_layers on) is not supported; only every-layer or "
                         "every-k-th-global patterns are")
    r.get("sliding_window", None)
    r.get("max_window_layers", None)


def _layer_types(r: _Reader) -> None:
    """Gemma 3 / newer configs: a per-layer list of "sliding_attention" / "full_attention"."""
    types = r.get("layer_types", None)
    if types is None:
        return
    n = r.fields["n_layers"]
    if len(types) != n or not set(types) <= {"sliding_attention", "full_attention"}:
        raise ValueError(f"{r.family} config.json: layer_types must list {n} of 'sliding_attention' / "
                         f"'full_attention'; got {types!r}")
    if "sliding_attention" not in types:
        r.set("sliding_window", None, "layer_types (all full_attention)")
        r.set("global_every", None, "layer_types")
        return
    for k in range(1, n + 1):
        if all((t == "full_attention") == ((i + 1) % k == 0) for i, t in enumerate(types)):
            r.set("global_every", k if "full_attention" in types else None, "layer_types")
            return
    if "full_attention" not in types:
        r.set("global_every", None, "layer_types")
        return
    raise ValueError(f"{r.family} config.json: layer_types {types!r}: only every-k-th-layer-global "
                     "patterns are supported")


def _map_gpt2(r: _Reader) -> None:
    r.take("vocab_size", "vocab_size", conv=_int("vocab_size"))
    d = r.take("d_model", ("n_embd", "hidden_size"), conv=_int("n_embd"))
    r.take("n_layers", ("n_layer", "num_hidden_layers"), conv=_int("n_layer"))
    r.take("n_heads", ("n_head", "num_attention_heads"), conv=_int("n_head"))
    r.take("d_ff", "n_inner", 4 * d, conv=_int("n_inner"))
    r.take("seq_len", ("n_positions", "max_position_embeddings"), conv=_int("n_positions"))
    r.take("norm_eps", "layer_norm_epsilon", 1e-5, conv=float)
    r.take("tied_embeddings", "tie_word_embeddings", True, conv=bool)
    _activation(r, "activation_function", False, "gelu_new")
    r.reject("add_cross_attention", bool, "(cross-attention layers) is not a decoder-only model")


def _map_gpt_neox(r: _Reader) -> None:
    _llama_sizes(r)
    r.take("norm_eps", "layer_norm_eps", 1e-5, conv=float)
    r.take("rope_theta", ("rotary_emb_base", "rope_theta"), 10000.0, conv=float)
    r.take("rotary_fraction", ("rotary_pct", "partial_rotary_factor"), 1.0, conv=float)
    r.take("tied_embeddings", "tie_word_embeddings", False, conv=bool)
    r.take("parallel_residual", "use_parallel_residual", True, conv=bool)
    r.take("bias", "attention_bias", True, conv=bool)
    r.set("mlp_bias", True, "(family: MLP biases)")
    r.set("norm_bias", True, "(family: LayerNorm with bias)")
    _activation(r, "hidden_act", False, "gelu")
    r.set("position", "rope", "(family: RoPE)")


def _map_gptj(r: _Reader) -> None:
    r.take("vocab_size", "vocab_size", conv=_int("vocab_size"))
    d = r.take("d_model", "n_embd", conv=_int("n_embd"))
    n_heads = r.take("n_heads", "n_head", conv=_int("n_head"))
    r.take("n_layers", "n_layer", conv=_int("n_layer"))
    r.take("d_ff", "n_inner", 4 * d, conv=_int("n_inner"))
    r.take("seq_len", "n_positions", conv=_int("n_positions"))
    r.take("norm_eps", "layer_norm_epsilon", 1e-5, conv=float)
    r.take("tied_embeddings", "tie_word_embeddings", False, conv=bool)
    r.reject("rotary", lambda v: not v, "(no rotary embedding) is not supported")
    rot = r.get("rotary_dim", None)
    hd = d // n_heads
    r.set("rotary_fraction", 1.0 if rot is None else rot / hd, "rotary_dim / (n_embd / n_head)")
    _activation(r, "activation_function", False, "gelu_new")
    r.set("position", "rope", "(family: RoPE)")
    r.set("bias", False, "(family: q, k, v, out without bias)")
    r.set("mlp_bias", True, "(family: MLP biases)")
    r.set("norm_bias", True, "(family: LayerNorm with bias)")
    r.set("head_bias", not r.fields["tied_embeddings"], "(family: lm_head with bias)")
    r.set("parallel_residual", True, "(family: parallel block)")
    r.set("shared_norm", True, "(family: one ln_1 for both branches)")


def _map_llama(r: _Reader) -> None:
    _common_llama(r, tied_default=False)
    ab = r.get("attention_bias", False)
    r.set("bias", bool(ab), "attention_bias")
    r.set("mlp_bias", bool(r.get("mlp_bias", False)), "mlp_bias")


def _map_mistral(r: _Reader) -> None:
    _common_llama(r, tied_default=False)
    r.take("sliding_window", "sliding_window", None)


def _map_qwen2(r: _Reader) -> None:
    _common_llama(r, tied_default=False)
    r.set("qkv_bias", True, "(family: q, k, v biases)")
    r.reject("use_mrope", bool, "(multimodal RoPE) is not supported")
    _no_sliding(r)


def _map_qwen3(r: _Reader) -> None:
    _common_llama(r, tied_default=False)
    r.set("bias", bool(r.get("attention_bias", False)), "attention_bias")
    r.set("qk_norm", "head", "(family: q_norm, k_norm over head_dim)")
    _no_sliding(r)
    if r.has("layer_types"):
        types = r.get("layer_types")
        if any(t != "full_attention" for t in types):
            raise ValueError("qwen3 config.json: layer_types with sliding_attention is not supported")


def _map_gemma(r: _Reader) -> None:
    # modeling_gemma's MLP uses hidden_activation, and the tanh GELU when that is null: the
    # hidden_act of Gemma 1 configs ("gelu") is not read by it, so it is listed as ignored.
    _common_llama(r, tied_default=True, act_key="hidden_activation", act_default="gelu_pytorch_tanh")
    if r.fields["mlp"] is None or r.data.get("hidden_activation") is None:
        r.set("mlp", "geglu", "hidden_activation (null: gelu_pytorch_tanh)")
    r.ignore("hidden_act")
    r.set("embed_scale", True, "(family: embeddings x sqrt(hidden_size))")
    r.set("norm_offset", True, "(family: RMSNorm x (1 + weight))")
    r.set("bias", bool(r.get("attention_bias", False)), "attention_bias")


def _map_gemma2(r: _Reader) -> None:
    _map_gemma(r)
    r.set("norm_placement", "sandwich", "(family: pre- and post-sublayer norms)")
    r.take("attn_softcap", "attn_logit_softcapping", None)
    r.take("final_softcap", "final_logit_softcapping", None)
    w = r.take("sliding_window", ("sliding_window", "sliding_window_size"), None)
    r.get("sliding_window_size", None)
    r.set("global_every", 2 if w is not None else None, "(family: odd layers global)")
    _layer_types(r)


def _map_gemma3(r: _Reader) -> None:
    _map_gemma(r)
    r.set("norm_placement", "sandwich", "(family: pre- and post-sublayer norms)")
    r.set("qk_norm", "head", "(family: q_norm, k_norm over head_dim)")
    r.take("attn_softcap", "attn_logit_softcapping", None)
    r.take("final_softcap", "final_logit_softcapping", None)
    w = r.take("sliding_window", "sliding_window", None)
    k = r.get(("sliding_window_pattern", "_sliding_window_pattern"), 6)
    r.set("global_every", k if w is not None else None, "sliding_window_pattern")
    _layer_types(r)


def _map_phi3(r: _Reader) -> None:
    _common_llama(r, tied_default=False)
    r.take("rotary_fraction", "partial_rotary_factor", 1.0, conv=float)
    r.take("sliding_window", "sliding_window", None)
    r.reject("attention_bias", bool, "is not supported (Phi-3's projections have no bias)")


def _map_olmo2(r: _Reader) -> None:
    _common_llama(r, tied_default=False)
    r.set("bias", bool(r.get("attention_bias", False)), "attention_bias")
    r.set("norm_placement", "post", "(family: norms after attention and MLP)")
    r.set("qk_norm", "full", "(family: q_norm, k_norm over the whole projection)")


def _map_falcon(r: _Reader) -> None:
    r.take("vocab_size", "vocab_size", conv=_int("vocab_size"))
    d = r.take("d_model", "hidden_size", conv=_int("hidden_size"))
    r.take("n_layers", ("num_hidden_layers", "n_layer"), conv=_int("num_hidden_layers"))
    h = r.take("n_heads", ("num_attention_heads", "n_head"), conv=_int("num_attention_heads"))
    r.take("d_ff", "ffn_hidden_size", 4 * d, conv=_int("ffn_hidden_size"))
    r.take("seq_len", "max_position_embeddings", 2048, conv=_int("max_position_embeddings"))
    r.take("norm_eps", "layer_norm_epsilon", 1e-5, conv=float)
    r.take("rope_theta", "rope_theta", 10000.0, conv=float)
    r.take("tied_embeddings", "tie_word_embeddings", True, conv=bool)
    r.reject("alibi", bool, "(ALiBi positions) is not supported; only RoPE falcons are")
    r.reject("apply_residual_connection_post_layernorm", bool, "is not supported (a post-norm residual)")
    new_arch = bool(r.get("new_decoder_architecture", False))
    parallel = bool(r.get("parallel_attn", True))
    if new_arch:
        kv = r.get(("num_kv_heads", "n_head_kv"), h)
        r.set("n_kv_heads", None if kv == h else kv, "num_kv_heads (new_decoder_architecture)")
        r.get("multi_query", None)
        two_norms = r.get("num_ln_in_parallel_attn", None) in (None, 2)  # None: 2 (FalconConfig)
        r.set("parallel_residual", True, "new_decoder_architecture (parallel block)")
        r.set("shared_norm", not two_norms, "num_ln_in_parallel_attn (ln_attn, ln_mlp)")
    else:
        mq = bool(r.get("multi_query", True))
        r.get(("num_kv_heads", "n_head_kv"), None)
        r.set("n_kv_heads", 1 if mq else None, "multi_query")
        r.set("parallel_residual", parallel, "parallel_attn")
        r.set("shared_norm", parallel, "parallel_attn (one input_layernorm)")
    b = r.take("bias", "bias", False, conv=bool)
    r.set("norm_bias", True, "(family: LayerNorm with bias)")
    r.set("mlp_bias", b, "bias")
    act = r.get("activation", "gelu")
    if act != "gelu":
        raise ValueError(f"falcon config.json: activation={act!r} is not supported; only 'gelu'")
    r.set("mlp", "gelu_exact", "activation")
    r.set("position", "rope", "(family: RoPE)")


def _map_starcoder2(r: _Reader) -> None:
    _common_llama(r, tied_default=True, gated=False, act_default="gelu_pytorch_tanh", eps_key="norm_epsilon")
    r.set("norm", "layernorm", "(family: LayerNorm)")
    b = r.take("bias", "use_bias", True, conv=bool)
    r.set("norm_bias", True, "(family: LayerNorm with bias)")
    r.set("mlp_bias", b, "use_bias")
    r.take("sliding_window", "sliding_window", None)
    r.get("residual_dropout", None)
    r.reject("mlp_type", lambda v: v != "default", "is not supported; only the default two-matrix MLP")
    r.reject("norm_type", lambda v: v != "layer_norm", "is not supported; only layer_norm")
    r.ignore("layer_norm_epsilon")  # configuration_starcoder2 reads norm_epsilon


def _map_nemotron(r: _Reader) -> None:
    _common_llama(r, tied_default=False, gated=False, act_default="relu2", eps_key="norm_eps")
    r.set("norm", "layernorm", "(family: LayerNorm1P)")
    r.set("norm_offset", True, "(family: LayerNorm1P, x (1 + weight))")
    r.set("norm_bias", True, "(family: LayerNorm1P has a bias)")
    r.set("bias", bool(r.get("attention_bias", False)), "attention_bias")
    r.set("mlp_bias", bool(r.get("mlp_bias", False)), "mlp_bias")
    r.take("rotary_fraction", ("partial_rotary_factor", "rope_percent"), 1.0, conv=float)
    r.get("rope_percentage", None)


def _experts(r: _Reader, n_key: str, width_key: str | None = None) -> None:
    """The routed experts of a MoE family: count, top-k, width (None: intermediate_size), and the
    settings that change values but no shape (top-k renormalisation, router logits output,
    training-time jitter), listed as ignored."""
    r.take("n_experts", n_key, conv=_int(n_key))
    r.take("experts_per_token", "num_experts_per_tok", conv=_int("num_experts_per_tok"))
    if width_key is not None:
        r.take("d_ff_expert", width_key, conv=_int(width_key))
    coef = r.get(("router_aux_loss_coef", "aux_loss_alpha"), None)
    if coef is not None:
        r.set("aux_loss_coef", float(coef), "router_aux_loss_coef / aux_loss_alpha")
    for key in ("norm_topk_prob", "output_router_logits", "router_jitter_noise", "router_z_loss_coef"):
        r.ignore(key)


def _map_mixtral(r: _Reader) -> None:
    # modeling_mixtral: Mistral attention, every layer a sparse MoE of num_local_experts SwiGLU
    # experts of width intermediate_size, a bias-free softmax router (Jiang et al. 2024, §2.1).
    _common_llama(r, tied_default=False)
    r.take("sliding_window", "sliding_window", None)
    _experts(r, "num_local_experts")


def _map_qwen3_moe(r: _Reader) -> None:
    # modeling_qwen3_moe: Qwen3 attention (QK-norm per head), experts of moe_intermediate_size;
    # decoder_sparse_step / mlp_only_layers say which layers keep the dense MLP.
    _map_qwen3(r)
    _experts(r, "num_experts", "moe_intermediate_size")
    r.reject("decoder_sparse_step", lambda v: v != 1, "(MoE only every k-th layer) is not supported; only 1")
    r.reject("mlp_only_layers", lambda v: bool(v), "(dense layers between MoE layers) is not supported; only []")


def _map_olmoe(r: _Reader) -> None:
    # modeling_olmoe: pre-norm, QK-norm (RMSNorm) over the whole q and k projections, every layer
    # a MoE of num_experts experts of width intermediate_size (Muennighoff et al. 2024, §2).
    _common_llama(r, tied_default=False)
    r.set("bias", bool(r.get("attention_bias", False)), "attention_bias")
    r.set("qk_norm", "full", "(family: q_norm, k_norm over the whole projection)")
    r.reject("clip_qkv", lambda v: v is not None, "(clipped q, k, v) is not supported; only null")
    _experts(r, "num_experts")


def _map_deepseek(r: _Reader) -> None:
    # modeling_deepseek_v2 / _v3: multi-head latent attention (DeepSeek-V2 §2.1), the first
    # first_k_dense_replace layers dense (intermediate_size), then n_routed_experts experts of
    # moe_intermediate_size and n_shared_experts shared ones; scoring_func softmax (V2) or sigmoid
    # (V3). Group-limited routing (n_group, topk_group, topk_method), the routed scaling factor
    # and the multi-token-prediction module (num_nextn_predict_layers: not part of the main
    # model's published count, DeepSeek-V3 report §2.2) change no shape of the main model.
    _common_llama(r, tied_default=False)
    r.set("attention_kind", "mla", "(family: multi-head latent attention)")
    r.take("head_dim", "qk_nope_head_dim", conv=_int("qk_nope_head_dim"))
    r.get("head_dim", None)
    r.take("q_lora_rank", "q_lora_rank", None)
    r.take("kv_lora_rank", "kv_lora_rank", conv=_int("kv_lora_rank"))
    r.take("qk_rope_head_dim", "qk_rope_head_dim", conv=_int("qk_rope_head_dim"))
    v = r.get("v_head_dim", None)
    r.set("v_head_dim", None if v is None or v == r.fields["head_dim"] else _int("v_head_dim")(v), "v_head_dim")
    r.set("bias", bool(r.get("attention_bias", False)), "attention_bias")
    _experts(r, "n_routed_experts", "moe_intermediate_size")
    shared = r.get("n_shared_experts", None)
    r.set("n_shared_experts", 0 if shared is None else _int("n_shared_experts")(shared), "n_shared_experts")
    r.take("dense_layers", "first_k_dense_replace", 0, conv=_int("first_k_dense_replace"))
    r.reject("moe_layer_freq", lambda v: v != 1, "(MoE only every k-th layer) is not supported; only 1")
    score = r.get("scoring_func", "softmax")
    if score not in ("softmax", "sigmoid"):
        raise ValueError(f"{r.family} config.json: scoring_func={score!r}: only 'softmax' and 'sigmoid'")
    r.set("router", score, "scoring_func")
    for key in ("topk_method", "n_group", "topk_group", "routed_scaling_factor", "seq_aux", "ep_size",
                "num_nextn_predict_layers"):
        r.ignore(key)


FAMILIES: dict[str, Callable[[_Reader], None]] = {
    "gpt2": _map_gpt2, "gpt_neox": _map_gpt_neox, "gptj": _map_gptj, "llama": _map_llama,
    "mistral": _map_mistral, "qwen2": _map_qwen2, "qwen3": _map_qwen3, "gemma": _map_gemma,
    "gemma2": _map_gemma2, "gemma3_text": _map_gemma3, "phi3": _map_phi3, "olmo2": _map_olmo2,
    "falcon": _map_falcon, "starcoder2": _map_starcoder2, "nemotron": _map_nemotron,
    "mixtral": _map_mixtral, "qwen3_moe": _map_qwen3_moe, "olmoe": _map_olmoe,
    "deepseek_v2": _map_deepseek, "deepseek_v3": _map_deepseek,
}


def load_json(source: str | os.PathLike | Mapping) -> dict:
    """The dict of a config.json path (or a dict given already), with a clear error for a
    missing or malformed file; a multimodal config's ``text_config`` is used for its text model."""
    if isinstance(source, Mapping):
        data = dict(source)
    elif isinstance(source, str | os.PathLike):
        try:
            with open(source, encoding="utf-8") as f:
                text = f.read()
        except OSError as err:
            raise ValueError(f"cannot read the config file {os.fspath(source)!r}: {err.strerror or err}") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{os.fspath(source)!r} is not valid JSON (line {err.lineno}, column "
                             f"{err.colno}: {err.msg}); give a Hugging Face config.json") from None
    else:
        raise ValueError(f"from_hf needs a path to a config.json or a dict; got {type(source).__name__}")
    if not isinstance(data, dict):
        raise ValueError(f"config.json must hold a JSON object; got {type(data).__name__}")
    return data


def family_of(data: Mapping[str, Any]) -> str:
    """The family of a config dict: its model_type, else its architectures; ValueError if unknown."""
    mt = data.get("model_type")
    if isinstance(mt, str):
        mt = ALIASES.get(mt, mt)
        if mt in FAMILIES:
            return mt
        raise ValueError(f"model_type={mt!r}: unknown family; supported: {', '.join(FAMILIES)}")
    archs = data.get("architectures") or []
    for a in archs if isinstance(archs, list) else []:
        if a in ARCHITECTURES:
            return ARCHITECTURES[a]
    raise ValueError(f"config.json has no model_type and no known architectures ({archs!r}); "
                     f"supported model_type: {', '.join(FAMILIES)}")


def read_hf(source: str | os.PathLike | Mapping) -> HFImport:
    """Map a Hugging Face config.json (path or dict) to a `TransformerConfig`, and say how.

    Raises:
      ValueError: unreadable or malformed JSON, unknown family, a required field missing, or a
        field that changes the shape and is not understood (each named).
    """
    data = load_json(source)
    if data.get("model_type") in ("gemma3",) and isinstance(data.get("text_config"), dict):
        data = {"model_type": "gemma3_text", **data["text_config"]}
    family = family_of(data)
    r = _Reader(data, family)
    r.used.update({"model_type"})
    FAMILIES[family](r)
    unknown = sorted(k for k in data if k not in r.used and k not in IGNORABLE and k not in r.ignorable)
    if unknown:
        raise ValueError(f"{family} config.json: field(s) {', '.join(unknown)} not understood; they may "
                         "change the shape, so nothing is guessed (remove them if they do not, or "
                         "file the family's mapping)")
    ignored = tuple(sorted(k for k in data if k not in r.used and k != "model_type"))
    fields = _canonical(r.fields)
    try:
        cfg = TransformerConfig(**fields)
    except ValueError as err:
        raise ValueError(f"{family} config.json maps to an invalid config: {err}") from None
    return HFImport(cfg, family, dict(r.mapped), ignored)


def _canonical(fields: dict) -> dict:
    """One spelling per config: an override equal to what it overrides becomes None (so the
    round trip ``read_hf(to_hf(cfg))`` compares equal), and a norm bias means nothing on RMSNorm."""
    out = dict(fields)
    bias = out.get("bias", True)
    for name in ("qkv_bias", "mlp_bias", "norm_bias"):
        if name in out and out[name] == bias:
            out[name] = None
    if out.get("norm", "layernorm") == "rmsnorm":
        out.pop("norm_bias", None)
    return out


# ----------------------------------------------------------------------------- writing
def _llama_like(cfg: TransformerConfig, model_type: str, **extra) -> dict:
    d = {
        "model_type": model_type, "vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model,
        "intermediate_size": cfg.d_ff, "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads, "num_key_value_heads": cfg.resolved_n_kv_heads,
        "max_position_embeddings": cfg.seq_len, "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta, "tie_word_embeddings": cfg.tied_embeddings,
        "hidden_act": "silu",
    }
    if cfg.head_dim is not None:
        d["head_dim"] = cfg.head_dim
    d.update(extra)
    return d


def _act_name(cfg: TransformerConfig) -> str:
    return {"gelu": "gelu_new", "gelu_exact": "gelu", "relu2": "relu2", "swiglu": "silu",
            "geglu": "gelu_pytorch_tanh"}[cfg.mlp]


_WRITERS: dict[str, Callable[[TransformerConfig], dict]] = {
    "gpt2": lambda c: {"model_type": "gpt2", "vocab_size": c.vocab_size, "n_embd": c.d_model,
                       "n_layer": c.n_layers, "n_head": c.n_heads, "n_inner": c.d_ff,
                       "n_positions": c.seq_len, "layer_norm_epsilon": c.norm_eps,
                       "tie_word_embeddings": c.tied_embeddings, "activation_function": _act_name(c)},
    "gpt_neox": lambda c: {"model_type": "gpt_neox", "vocab_size": c.vocab_size, "hidden_size": c.d_model,
                           "num_hidden_layers": c.n_layers, "num_attention_heads": c.n_heads,
                           "intermediate_size": c.d_ff, "max_position_embeddings": c.seq_len,
                           "layer_norm_eps": c.norm_eps, "rotary_emb_base": c.rope_theta,
                           "rotary_pct": c.rotary_fraction, "tie_word_embeddings": c.tied_embeddings,
                           "use_parallel_residual": c.parallel_residual, "attention_bias": c.bias,
                           "hidden_act": _act_name(c)},
    "gptj": lambda c: {"model_type": "gptj", "vocab_size": c.vocab_size, "n_embd": c.d_model,
                       "n_layer": c.n_layers, "n_head": c.n_heads, "n_inner": c.d_ff, "n_positions": c.seq_len,
                       "layer_norm_epsilon": c.norm_eps, "tie_word_embeddings": c.tied_embeddings,
                       "rotary_dim": c.rotary_dim, "activation_function": _act_name(c)},
    "llama": lambda c: _llama_like(c, "llama", attention_bias=c.bias,
                                   mlp_bias=c.resolved_mlp_bias),
    "mistral": lambda c: _llama_like(c, "mistral", sliding_window=c.sliding_window),
    "qwen2": lambda c: _llama_like(c, "qwen2"),
    "qwen3": lambda c: _llama_like(c, "qwen3", attention_bias=c.bias),
    "gemma": lambda c: _llama_like(c, "gemma", hidden_activation="gelu_pytorch_tanh", attention_bias=c.bias),
    "gemma2": lambda c: _llama_like(c, "gemma2", hidden_activation="gelu_pytorch_tanh", attention_bias=c.bias,
                                    attn_logit_softcapping=c.attn_softcap,
                                    final_logit_softcapping=c.final_softcap, sliding_window=c.sliding_window),
    "gemma3_text": lambda c: _llama_like(c, "gemma3_text", hidden_activation="gelu_pytorch_tanh", attention_bias=c.bias,
                                         attn_logit_softcapping=c.attn_softcap,
                                         final_logit_softcapping=c.final_softcap,
                                         sliding_window=c.sliding_window,
                                         sliding_window_pattern=c.global_every or 6),
    "phi3": lambda c: _llama_like(c, "phi3", partial_rotary_factor=c.rotary_fraction,
                                  sliding_window=c.sliding_window),
    "olmo2": lambda c: _llama_like(c, "olmo2", attention_bias=c.bias),
    "falcon": lambda c: {"model_type": "falcon", "vocab_size": c.vocab_size, "hidden_size": c.d_model,
                         "num_hidden_layers": c.n_layers, "num_attention_heads": c.n_heads,
                         "ffn_hidden_size": c.d_ff, "max_position_embeddings": c.seq_len,
                         "layer_norm_epsilon": c.norm_eps, "rope_theta": c.rope_theta,
                         "tie_word_embeddings": c.tied_embeddings, "alibi": False, "bias": c.bias,
                         "new_decoder_architecture": True, "num_kv_heads": c.resolved_n_kv_heads,
                         "num_ln_in_parallel_attn": 1 if c.shared_norm else 2},
    "starcoder2": lambda c: {**_llama_like(c, "starcoder2", hidden_act=_act_name(c), use_bias=c.bias,
                                           sliding_window=c.sliding_window, norm_epsilon=c.norm_eps)},
    "nemotron": lambda c: {**_llama_like(c, "nemotron", hidden_act=_act_name(c), norm_eps=c.norm_eps,
                                         partial_rotary_factor=c.rotary_fraction, attention_bias=c.bias,
                                         mlp_bias=c.resolved_mlp_bias)},
    "mixtral": lambda c: _llama_like(c, "mixtral", sliding_window=c.sliding_window, **_moe_hf(c, "num_local_experts")),
    "qwen3_moe": lambda c: _llama_like(c, "qwen3_moe", attention_bias=c.bias, moe_intermediate_size=c.d_ff_expert,
                                       **_moe_hf(c, "num_experts")),
    "olmoe": lambda c: _llama_like(c, "olmoe", attention_bias=c.bias, **_moe_hf(c, "num_experts")),
    "deepseek_v2": lambda c: _deepseek_hf(c, "deepseek_v2"),
    "deepseek_v3": lambda c: _deepseek_hf(c, "deepseek_v3"),
}


def _moe_hf(c: TransformerConfig, n_key: str) -> dict:
    return {n_key: c.n_experts, "num_experts_per_tok": c.experts_per_token, "router_aux_loss_coef": c.aux_loss_coef}


def _deepseek_hf(c: TransformerConfig, model_type: str) -> dict:
    d = _llama_like(c, model_type, attention_bias=c.bias, qk_nope_head_dim=c.head_dim, q_lora_rank=c.q_lora_rank,
                    kv_lora_rank=c.kv_lora_rank, qk_rope_head_dim=c.qk_rope_head_dim,
                    v_head_dim=c.resolved_v_head_dim, n_routed_experts=c.n_experts,
                    num_experts_per_tok=c.experts_per_token, n_shared_experts=c.n_shared_experts,
                    moe_intermediate_size=c.d_ff_expert, first_k_dense_replace=c.dense_layers,
                    moe_layer_freq=1, scoring_func=c.router, aux_loss_alpha=c.aux_loss_coef)
    d.pop("head_dim", None)
    return d


def _clean(d: dict) -> dict:
    if d["model_type"] in ("starcoder2", "nemotron"):
        d.pop("rms_norm_eps", None)
    if d["model_type"].startswith("gemma"):
        d.pop("hidden_act", None)  # modeling_gemma reads hidden_activation
    return d


def to_hf(cfg: TransformerConfig, family: str | None = None) -> dict:
    """A config.json dict that `read_hf` maps back to exactly ``cfg``.

    Args:
      family: the model_type to write; None = the first family (in `FAMILIES` order) that can
        state ``cfg`` exactly.

    Raises:
      ValueError: no family (or not the one asked for) can express ``cfg`` exactly.
    """
    if cfg.relaxed:
        raise ValueError("to_hf needs integer sizes; got a relaxed (array) config")
    if family is not None and family not in _WRITERS:
        raise ValueError(f"family={family!r}: unknown; valid: {', '.join(_WRITERS)}")
    tried = []
    for name in [family] if family else list(_WRITERS):
        out = _clean(_WRITERS[name](cfg))
        try:
            back = read_hf(out).config
        except ValueError as err:
            tried.append(f"{name}: {err}")
            continue
        if back == cfg:
            return out
        diff = [f.name for f in dataclasses.fields(cfg) if getattr(cfg, f.name) != getattr(back, f.name)]
        tried.append(f"{name}: cannot state {', '.join(diff)}")
    raise ValueError("no Hugging Face family states this config exactly (" + "; ".join(tried) + ")")
