"""The one model description every part of scaling-planner reads.

`TransformerConfig` describes a decoder-only transformer: the Flax model (`models.Transformer`)
builds it, the closed forms in `planner` count it, the validator lowers it, the planner searches it.

Sizes are exact Python ints. For the planner's continuous relaxation the size fields may instead
be JAX arrays or NumPy floating arrays (e.g. tracers under `jit`/`vmap`/`grad`); those skip the
integrality and divisibility checks, which only make sense for a concrete shape.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, Literal

import numpy as np

MLP_KINDS = ("gelu", "swiglu", "geglu", "gelu_exact", "relu2")
#: The MLPs with a gate (three matrices).
GATED_MLPS = ("swiglu", "geglu")
NORM_KINDS = ("layernorm", "rmsnorm")
POSITION_KINDS = ("learned", "rope")
NORM_PLACEMENTS = ("pre", "sandwich", "post")
QK_NORMS = ("head", "full")

#: The size fields, in declaration order; each is a positive integer (or a relaxed array).
SIZE_FIELDS = ("vocab_size", "d_model", "n_layers", "n_heads", "d_ff", "seq_len")
OPTIONAL_SIZE_FIELDS = ("n_kv_heads", "head_dim")
#: Mixture-of-experts and latent-attention sizes: positive ints or None (or relaxed arrays).
MOE_SIZE_FIELDS = ("n_experts", "experts_per_token", "d_ff_expert", "d_ff_shared")
MLA_SIZE_FIELDS = ("q_lora_rank", "kv_lora_rank", "qk_rope_head_dim", "v_head_dim")
#: Every size field (required and optional), in declaration order of their groups.
ALL_SIZE_FIELDS = SIZE_FIELDS + OPTIONAL_SIZE_FIELDS + MOE_SIZE_FIELDS + MLA_SIZE_FIELDS
ROUTERS = ("softmax", "sigmoid")
ATTENTION_KINDS = ("mha", "mla")


def is_relaxed(value: Any) -> bool:
    """True for a continuous (array) size: a JAX array or tracer, or a NumPy floating array."""
    if isinstance(value, np.ndarray | np.floating):
        return np.issubdtype(np.asarray(value).dtype, np.floating)
    try:
        import jax
    except ImportError:  # pragma: no cover - jax is a runtime dependency
        return False
    return isinstance(value, jax.Array)


def check_size(name: str, value: Any, *, optional: bool = False) -> None:
    if optional and value is None:
        return
    if is_relaxed(value):
        import jax

        if isinstance(value, jax.core.Tracer):
            return  # under jit/grad/vmap: no concrete value to check
        arr = np.asarray(value)
        if arr.size == 0 or not np.all(np.isfinite(arr)) or np.any(arr <= 0):
            raise ValueError(f"{name}={value!r}: a relaxed (array) size must be positive and finite everywhere")
        return
    hint = " (or None)" if optional else ""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or isinstance(
        value, np.integer
    ):
        raise ValueError(
            f"{name}={value!r} ({type(value).__name__}): must be a positive Python int{hint}; "
            "booleans, floats, strings and NumPy integers are not sizes "
            "(use int(x), or a float JAX array for the relaxed planner path)"
        )
    if value <= 0:
        raise ValueError(f"{name}={value!r}: must be a positive int{hint}, got {value}")


def _check_choice(name: str, value: Any, valid: tuple[str, ...]) -> None:
    if not isinstance(value, str) or value not in valid:
        raise ValueError(f"{name}={value!r}: unknown option; valid: {', '.join(map(repr, valid))}")


def _check_bool(name: str, value: Any, *, optional: bool = False) -> None:
    if optional and value is None:
        return
    if not isinstance(value, bool):
        rule = "True, False or None" if optional else "True or False"
        raise ValueError(f"{name}={value!r}: must be {rule}")


def _check_optional_positive_float(name: str, value: Any) -> None:
    if value is not None:
        _check_positive_float(name, value)


def _check_positive_float(name: str, value: Any) -> None:
    try:
        finite = not isinstance(value, bool) and isinstance(value, numbers.Real) and math.isfinite(value)
    except OverflowError:  # an int beyond float's range
        finite = False
    if not finite or value <= 0:
        raise ValueError(f"{name}={value!r}: must be a positive finite number")


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """A decoder-only transformer, pre-norm, as GPT-2, Llama, Mistral, Qwen and Gemma build it.

    Args:
      vocab_size: number of tokens in the vocabulary.
      d_model: width of the residual stream.
      n_layers: number of transformer blocks.
      n_heads: number of query heads.
      d_ff: hidden width of the MLP. For the gated variants (swiglu, geglu) this is the width
        of each of the gate and up projections, as Llama's ``intermediate_size``.
      seq_len: context length; also the size of the learned position table.
      n_kv_heads: key/value heads (grouped-query attention when < n_heads); None = n_heads.
      head_dim: width of one head; None = d_model // n_heads.
      tied_embeddings: the output head reuses the token embedding (``nnx.Embed.attend``).
      mlp: "gelu" (two matrices), "swiglu" or "geglu" (three matrices, gated).
      norm: "layernorm" (scale, and bias when ``bias``) or "rmsnorm" (scale only).
      position: "learned" (a seq_len x d_model table) or "rope" (rotary, no parameters).
      bias: biases on every linear projection, and on LayerNorm.
      qkv_bias: None = follow ``bias``; True/False overrides it for q, k, v only (Qwen2).
      embed_scale: multiply token embeddings by sqrt(d_model) (Gemma). No parameters.
      rope_theta: RoPE base frequency.
      norm_eps: epsilon of the norms.

    Architecture options (each default keeps the plain pre-norm block above):
      norm_placement: "pre" (``x + f(norm(x))``), "sandwich" (``x + norm(f(norm(x)))``, Gemma 2
        and 3) or "post" (``x + norm(f(x))``, OLMo 2: the norm moves after each sublayer).
      norm_offset: the norms multiply by (1 + scale), scale stored zero-centred (Gemma's
        RMSNorm, Nemotron's LayerNorm1P). Same parameters, one more add per norm.
      norm_bias: None = follow ``bias``; LayerNorm's shift on or off on its own (Falcon and
        Nemotron have LayerNorm biases but bias-free projections).
      mlp_bias: None = follow ``bias``; biases of the MLP projections on their own (GPT-J).
      head_bias: a bias on the (untied) output head (GPT-J).
      qk_norm: None, "head" (a norm over head_dim shared by the heads, on q and k: Qwen3,
        Gemma 3) or "full" (a norm over the whole q and k projections: OLMo 2).
      parallel_residual: ``x + attn(norm1(x)) + mlp(norm2(x))`` (GPT-J, GPT-NeoX, Falcon).
      shared_norm: with parallel_residual, one norm feeds both branches (GPT-J, Falcon-7B).
      rotary_fraction: the share of each head's dims that RoPE rotates (GPT-NeoX
        ``rotary_pct``); ``int(head_dim * rotary_fraction)`` dims, which must be even.
      sliding_window: None, or the number of keys each query sees (itself included) on the
        windowed layers (Mistral, Gemma 2 and 3).
      global_every: with sliding_window, layers i with (i + 1) % global_every == 0 attend to
        the whole sequence (Gemma 2: 2, Gemma 3: 6); None = every layer windowed.
      attn_softcap: None, or c: scores -> c * tanh(scores / c) before the mask (Gemma 2).
      final_softcap: None, or c: logits -> c * tanh(logits / c) (Gemma 2).

    Mixture of experts (Shazeer et al. 2017; Mixtral, DeepSeekMoE, Qwen3-MoE, OLMoE). Each
    default keeps the dense MLP:
      n_experts: routed experts per MoE layer; None = a dense MLP in every layer.
      experts_per_token: top-k; required, 1 <= k <= n_experts, exactly when n_experts is set.
      n_shared_experts: always-on experts (DeepSeekMoE, Dai et al. 2024 §3.2), each d_ff_shared wide.
      d_ff_expert: hidden width of each routed expert; None = d_ff.
      d_ff_shared: hidden width of each shared expert; None = d_ff_expert.
      dense_layers: the first K layers keep a dense MLP of width d_ff (DeepSeek's
        ``first_k_dense_replace``); the other n_layers - K are MoE layers.
      router: router scoring, "softmax" over the experts (Mixtral, Qwen3-MoE, OLMoE) or
        "sigmoid" per expert, the top-k renormalised (DeepSeek-V3, arXiv:2412.19437 eq. 13-15).
      capacity_factor: None = dropless (tokens sorted by expert, grouped matmul); a number =
        dense dispatch with ceil(capacity_factor * tokens * k / n_experts) slots per expert.
      aux_loss_coef: weight of the load-balancing loss added to the training loss (Switch
        Transformer's alpha, Fedus et al. 2022 eq. 4; 0.01 there, Mixtral 0.02, Qwen3-MoE 0.001).
      Routed experts and the router have no biases (none of the public MoE checkpoints has them).

    Attention kind:
      attention_kind: "mha" (multi-head, grouped-query or multi-query attention by n_kv_heads)
        or "mla", DeepSeek-V2's multi-head latent attention (arXiv:2405.04434 §2.1): q through
        an optional low-rank bottleneck, k and v from one compressed latent plus one shared
        rotary key. With "mla", head_dim is the non-rotary part of q and k (``qk_nope_head_dim``).
      q_lora_rank: rank of q's compression (d_c' in §2.1.2); None = q projected directly (V2-Lite).
      kv_lora_rank: rank of the joint key-value latent (d_c in §2.1.2); required for "mla".
      qk_rope_head_dim: the decoupled rotary dims per head (d_h^R in §2.1.3); required for "mla".
      v_head_dim: width of each value head; None = head_dim.

    Example:
      >>> cfg = TransformerConfig(vocab_size=97, d_model=48, n_layers=2, n_heads=4, d_ff=96, seq_len=16)
      >>> cfg.resolved_head_dim, cfg.resolved_n_kv_heads
      (12, 4)
    """

    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    d_ff: int
    seq_len: int
    n_kv_heads: int | None = None
    head_dim: int | None = None
    tied_embeddings: bool = True
    mlp: Literal["gelu", "swiglu", "geglu"] = "gelu"
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    position: Literal["learned", "rope"] = "learned"
    bias: bool = True
    qkv_bias: bool | None = None
    embed_scale: bool = False
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    norm_placement: Literal["pre", "sandwich", "post"] = "pre"
    norm_offset: bool = False
    norm_bias: bool | None = None
    mlp_bias: bool | None = None
    head_bias: bool = False
    qk_norm: Literal["head", "full"] | None = None
    parallel_residual: bool = False
    shared_norm: bool = False
    rotary_fraction: float = 1.0
    sliding_window: int | None = None
    global_every: int | None = None
    attn_softcap: float | None = None
    final_softcap: float | None = None
    n_experts: int | None = None
    experts_per_token: int | None = None
    n_shared_experts: int = 0
    d_ff_expert: int | None = None
    d_ff_shared: int | None = None
    dense_layers: int = 0
    router: Literal["softmax", "sigmoid"] = "softmax"
    capacity_factor: float | None = None
    aux_loss_coef: float = 0.01
    attention_kind: Literal["mha", "mla"] = "mha"
    q_lora_rank: int | None = None
    kv_lora_rank: int | None = None
    qk_rope_head_dim: int | None = None
    v_head_dim: int | None = None

    def __post_init__(self) -> None:
        for name in SIZE_FIELDS:
            check_size(name, getattr(self, name))
        for name in OPTIONAL_SIZE_FIELDS:
            check_size(name, getattr(self, name), optional=True)
        _check_choice("mlp", self.mlp, MLP_KINDS)
        _check_choice("norm", self.norm, NORM_KINDS)
        _check_choice("position", self.position, POSITION_KINDS)
        for name in ("tied_embeddings", "bias", "embed_scale"):
            _check_bool(name, getattr(self, name))
        _check_bool("qkv_bias", self.qkv_bias, optional=True)
        _check_positive_float("rope_theta", self.rope_theta)
        _check_positive_float("norm_eps", self.norm_eps)
        self._check_architecture()
        self._check_moe()
        self._check_mla()

        if self.relaxed:
            return  # divisibility has no meaning for a continuous shape
        if self.n_kv_heads is not None and self.n_heads % self.n_kv_heads != 0:
            raise ValueError(
                f"n_kv_heads={self.n_kv_heads}: must divide n_heads={self.n_heads} "
                "(each key/value head serves a whole group of query heads)"
            )
        if self.head_dim is None and self.d_model % self.n_heads != 0:
            raise ValueError(
                f"d_model={self.d_model}: must be divisible by n_heads={self.n_heads} "
                "when head_dim is None; or set head_dim explicitly"
            )
        if self.position == "rope" and self.rotary_fraction != 1:
            rot = self.rotary_dim
            if rot == 0 or rot % 2:
                raise ValueError(f"rotary_fraction={self.rotary_fraction}: rotates "
                                 f"int({self.resolved_head_dim} * {self.rotary_fraction}) = {rot} dims; "
                                 "need a positive even number (RoPE rotates pairs)")
        elif self.position == "rope" and self.resolved_head_dim % 2 != 0:
            raise ValueError(
                f"head_dim={self.resolved_head_dim}: must be even with position='rope' "
                "(RoPE rotates pairs of dimensions)"
            )

    def _check_architecture(self) -> None:
        """The architecture options: types, and the combinations that mean something."""
        _check_choice("norm_placement", self.norm_placement, NORM_PLACEMENTS)
        if self.qk_norm is not None:
            _check_choice("qk_norm", self.qk_norm, QK_NORMS)
        for name in ("norm_offset", "head_bias", "parallel_residual", "shared_norm"):
            _check_bool(name, getattr(self, name))
        for name in ("norm_bias", "mlp_bias"):
            _check_bool(name, getattr(self, name), optional=True)
        for name in ("sliding_window", "global_every"):
            value = getattr(self, name)
            if value is not None and not is_relaxed(value):
                check_size(name, value, optional=True)
            elif value is not None:
                raise ValueError(f"{name}={value!r}: must be a positive Python int or None (not relaxed)")
        for name in ("attn_softcap", "final_softcap"):
            _check_optional_positive_float(name, getattr(self, name))
        f = self.rotary_fraction
        if isinstance(f, bool) or not isinstance(f, numbers.Real) or not 0 < f <= 1:
            raise ValueError(f"rotary_fraction={f!r}: must be a number in (0, 1] (1 = rotate every dim)")
        if self.shared_norm and not self.parallel_residual:
            raise ValueError("shared_norm=True: only with parallel_residual=True (one norm feeding "
                             "both parallel branches); set parallel_residual=True or drop shared_norm")
        if self.parallel_residual and self.norm_placement != "pre":
            raise ValueError(f"parallel_residual=True with norm_placement={self.norm_placement!r}: "
                             "the parallel block is pre-norm; use norm_placement='pre'")
        if self.global_every is not None and self.sliding_window is None:
            raise ValueError(f"global_every={self.global_every}: only with a sliding_window "
                             "(it says which layers are not windowed); set sliding_window or drop it")
        if self.head_bias and self.tied_embeddings:
            raise ValueError("head_bias=True: the tied head is the embedding table and has no bias; "
                             "set tied_embeddings=False or head_bias=False")
        if self.rotary_fraction != 1 and self.position != "rope":
            raise ValueError(f"rotary_fraction={self.rotary_fraction}: only with position='rope'")

    def _check_moe(self) -> None:
        """The expert fields: sizes, and each one only where it means something."""
        for name in MOE_SIZE_FIELDS:
            check_size(name, getattr(self, name), optional=True)
        for name in ("n_shared_experts", "dense_layers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or isinstance(
                value, np.integer
            ) or value < 0:
                raise ValueError(f"{name}={value!r}: must be a Python int >= 0")
        _check_choice("router", self.router, ROUTERS)
        _check_optional_positive_float("capacity_factor", self.capacity_factor)
        a = self.aux_loss_coef
        if isinstance(a, bool) or not isinstance(a, numbers.Real) or not math.isfinite(a) or a < 0:
            raise ValueError(f"aux_loss_coef={a!r}: must be a finite number >= 0 (0 = no load-balancing loss)")
        n, k = self.n_experts, self.experts_per_token
        if n is None:
            given = [f"{name}={getattr(self, name)!r}" for name, unset in (
                ("experts_per_token", None), ("n_shared_experts", 0), ("d_ff_expert", None),
                ("d_ff_shared", None), ("dense_layers", 0), ("router", "softmax"), ("capacity_factor", None),
                ("aux_loss_coef", 0.01))
                if not (getattr(self, name) is unset or (unset is not None and getattr(self, name) == unset))]
            if given:
                raise ValueError(f"{', '.join(given)}: only with a mixture of experts; set n_experts "
                                 "(and experts_per_token) or drop them")
            return
        if k is None:
            raise ValueError(f"n_experts={n!r}: needs experts_per_token (the top-k each token is routed "
                             "to, 1 <= k <= n_experts)")
        if not is_relaxed(n) and not is_relaxed(k) and k > n:
            raise ValueError(f"experts_per_token={k}: must be <= n_experts={n} (a token cannot use more "
                             "experts than there are)")
        if self.d_ff_shared is not None and self.n_shared_experts == 0:
            raise ValueError(f"d_ff_shared={self.d_ff_shared!r}: only with n_shared_experts >= 1; "
                             "set n_shared_experts or drop d_ff_shared")
        if not is_relaxed(self.n_layers) and self.dense_layers >= self.n_layers:
            raise ValueError(f"dense_layers={self.dense_layers}: must be < n_layers={self.n_layers} "
                             "(at least one MoE layer); for a dense model set n_experts=None")

    def _check_mla(self) -> None:
        """Latent attention's fields: required with attention_kind='mla', refused without it."""
        _check_choice("attention_kind", self.attention_kind, ATTENTION_KINDS)
        for name in MLA_SIZE_FIELDS:
            check_size(name, getattr(self, name), optional=True)
        if self.attention_kind == "mha":
            given = [f"{name}={getattr(self, name)!r}" for name in MLA_SIZE_FIELDS
                     if getattr(self, name) is not None]
            if given:
                raise ValueError(f"{', '.join(given)}: only with attention_kind='mla'; set it or drop them")
            return
        missing = [name for name in ("kv_lora_rank", "qk_rope_head_dim") if getattr(self, name) is None]
        if missing:
            raise ValueError(f"attention_kind='mla': needs {' and '.join(missing)} (DeepSeek-V2's "
                             "kv_lora_rank and qk_rope_head_dim, e.g. 512 and 64)")
        if self.position != "rope":
            raise ValueError(f"attention_kind='mla' with position={self.position!r}: latent attention "
                             "carries its positions in the decoupled rotary key; use position='rope'")
        if self.n_kv_heads is not None and self.n_kv_heads != self.n_heads:
            raise ValueError(f"n_kv_heads={self.n_kv_heads}: latent attention gives every head its own "
                             "key and value (from the shared latent); set n_kv_heads=None")
        if self.resolved_qkv_bias:
            raise ValueError("attention_kind='mla' with biases on q, k, v: latent attention's projections "
                             "have none; set qkv_bias=False (or bias=False)")
        for name, bad, fix in (("qk_norm", self.qk_norm is not None, "None"),
                               ("rotary_fraction", self.rotary_fraction != 1, "1.0"),
                               ("parallel_residual", self.parallel_residual, "False")):
            if bad:
                raise ValueError(f"{name}={getattr(self, name)!r} with attention_kind='mla': not supported; "
                                 f"set {name}={fix}")
        r = self.qk_rope_head_dim
        if not is_relaxed(r) and r % 2:
            raise ValueError(f"qk_rope_head_dim={r}: must be even (RoPE rotates pairs of dimensions)")

    # ----------------------------------------------------------------- derived values
    @property
    def relaxed(self) -> bool:
        """True when any size is a continuous array (the planner's relaxation)."""
        return any(is_relaxed(getattr(self, n)) for n in ALL_SIZE_FIELDS)

    @property
    def is_moe(self) -> bool:
        """True for a mixture of experts (n_experts set)."""
        return self.n_experts is not None

    @property
    def moe_layers(self):
        """Layers with a routed MLP: n_layers - dense_layers for a MoE, else 0."""
        return self.n_layers - self.dense_layers if self.is_moe else 0

    def layer_is_moe(self, i: int) -> bool:
        """Whether block i (0-based) has the routed MLP (the first dense_layers keep a dense one)."""
        return self.is_moe and i >= self.dense_layers

    @property
    def resolved_d_ff_expert(self):
        """Hidden width of one routed expert (d_ff when d_ff_expert is None)."""
        return self.d_ff if self.d_ff_expert is None else self.d_ff_expert

    @property
    def resolved_d_ff_shared(self):
        """Hidden width of one shared expert (the routed experts' width when d_ff_shared is None)."""
        return self.resolved_d_ff_expert if self.d_ff_shared is None else self.d_ff_shared

    @property
    def is_mla(self) -> bool:
        return self.attention_kind == "mla"

    @property
    def resolved_v_head_dim(self):
        """Width of one value head: v_head_dim for MLA when set, else head_dim."""
        return self.resolved_head_dim if self.v_head_dim is None else self.v_head_dim

    @property
    def qk_head_dim(self):
        """Width of one query/key head in the score product: head_dim (+ qk_rope_head_dim for MLA)."""
        return self.resolved_head_dim + (self.qk_rope_head_dim if self.is_mla else 0)

    def expert_capacity(self, tokens: int) -> int:
        """Slots per expert under capacity_factor: ceil(capacity_factor * tokens * k / n_experts)
        (GShard, Lepikhin et al. 2020 §2.2; Switch, Fedus et al. 2022 eq. 3), at most ``tokens``."""
        if self.capacity_factor is None or not self.is_moe:
            raise ValueError("expert_capacity: only for a MoE config with capacity_factor set")
        slots = math.ceil(self.capacity_factor * tokens * self.experts_per_token / self.n_experts)
        return max(1, min(int(tokens), slots))

    @property
    def resolved_n_kv_heads(self):
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def resolved_head_dim(self):
        if self.head_dim is not None:
            return self.head_dim
        if self.relaxed:
            return self.d_model / self.n_heads
        return self.d_model // self.n_heads

    @property
    def resolved_qkv_bias(self) -> bool:
        return self.bias if self.qkv_bias is None else self.qkv_bias

    @property
    def gated(self) -> bool:
        """True for the gated MLPs (swiglu, geglu): three matrices instead of two."""
        return self.mlp in GATED_MLPS

    @property
    def resolved_norm_bias(self) -> bool:
        """Whether LayerNorm has its shift (RMSNorm never has one)."""
        return self.bias if self.norm_bias is None else self.norm_bias

    @property
    def resolved_mlp_bias(self) -> bool:
        return self.bias if self.mlp_bias is None else self.mlp_bias

    @property
    def rotary_dim(self):
        """Dims of each head that RoPE rotates: int(head_dim * rotary_fraction), as GPT-NeoX."""
        if self.is_mla:
            return self.qk_rope_head_dim  # latent attention rotates only its decoupled dims
        hd = self.resolved_head_dim
        if self.rotary_fraction == 1:
            return hd
        if self.relaxed:
            return hd * self.rotary_fraction
        return int(hd * self.rotary_fraction)

    @property
    def norms_per_layer(self) -> int:
        """Norms over d_model in one block: 2 (pre, post, parallel), 4 (sandwich), 1 (shared)."""
        if self.norm_placement == "sandwich":
            return 4
        return 1 if self.shared_norm else 2

    def layer_windows(self) -> tuple[int | None, ...]:
        """Per layer, the sliding window (None: the layer attends to the whole causal prefix)."""
        w, k = self.sliding_window, self.global_every
        if w is None:
            return (None,) * self.n_layers
        return tuple(None if k is not None and (i + 1) % k == 0 else w for i in range(self.n_layers))

    @property
    def n_windowed_layers(self):
        """How many layers are windowed (a float for a relaxed n_layers)."""
        if self.sliding_window is None:
            return 0
        if self.global_every is None:
            return self.n_layers
        if is_relaxed(self.n_layers):
            return self.n_layers * (1 - 1 / self.global_every)
        return self.n_layers - self.n_layers // self.global_every

    @classmethod
    def from_hf(cls, source: Any) -> TransformerConfig:
        """The config of a Hugging Face ``config.json`` (a path, or the dict already loaded),
        mapped family by family (`models.hf.read_hf`, which also says which fields it ignored).

        Raises:
          ValueError: unreadable or malformed JSON, an unknown family, a missing required
            field, or a shape-changing field that is not understood (each named).
        """
        from models.hf import read_hf

        return read_hf(source).config

    def to_hf(self, family: str | None = None) -> dict:
        """A ``config.json`` dict that `from_hf` reads back to this exact config
        (`models.hf.to_hf`); ValueError when no family (or not ``family``) can state it."""
        from models.hf import to_hf

        return to_hf(self, family)

    def replace(self, **changes: Any) -> TransformerConfig:
        """A copy with some fields changed (validated again). Unknown field: ValueError."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ValueError(f"unknown config field(s) {unknown}; valid: {', '.join(field_names())}")
        return dataclasses.replace(self, **changes)


def field_names() -> tuple[str, ...]:
    """The names of TransformerConfig's fields, in order."""
    return tuple(f.name for f in dataclasses.fields(TransformerConfig))
