"""Named configurations of public models, each copied from its published config.

>>> from models import presets
>>> presets.get("gpt2").d_model
768
>>> presets.get("gpt2", n_layers=6).n_layers
6
"""

from __future__ import annotations

from typing import Any, NamedTuple

from models.config import TransformerConfig


class Preset(NamedTuple):
    config: TransformerConfig
    source: str
    #: Parameter count the model's publisher reports (None for the small test shapes).
    published_params: int | None = None
    published_source: str | None = None
    #: Half a unit of the published figure's last digit when it is rounded (DeepSeek-V3's "671B"):
    #: the count must lie within it; 0 = the published count is exact.
    published_rounding: int = 0


_HF = "https://huggingface.co/{}/blob/main/config.json"
_HF_COUNT = "transformers `{}` model.num_parameters() (the count Hugging Face shows on the model page)"


def _gpt2(name: str, d_model: int, n_layers: int, n_heads: int, published: int) -> Preset:
    # GPT-2 (Radford et al. 2019): learned positions, LayerNorm with bias, GELU (tanh), biases
    # everywhere, output head tied to wte, n_positions = 1024, d_ff = 4 * d_model.
    return Preset(
        TransformerConfig(
            vocab_size=50257, d_model=d_model, n_layers=n_layers, n_heads=n_heads,
            d_ff=4 * d_model, seq_len=1024,
        ),
        _HF.format(f"openai-community/{name}"),
        published,
        _HF_COUNT.format(f"openai-community/{name}"),
    )


def _llama(**kw: Any) -> TransformerConfig:
    # Llama family: RoPE, RMSNorm, SwiGLU, no biases, untied head unless said.
    base = dict(mlp="swiglu", norm="rmsnorm", position="rope", bias=False, tied_embeddings=False)
    return TransformerConfig(**(base | kw))


_PRESETS: dict[str, Preset] = {
    "gpt2": _gpt2("gpt2", 768, 12, 12, 124_439_808),
    "gpt2-medium": _gpt2("gpt2-medium", 1024, 24, 16, 354_823_168),
    "gpt2-large": _gpt2("gpt2-large", 1280, 36, 20, 774_030_080),
    "gpt2-xl": _gpt2("gpt2-xl", 1600, 48, 25, 1_557_611_200),
    "llama-2-7b": Preset(
        _llama(vocab_size=32000, d_model=4096, n_layers=32, n_heads=32, d_ff=11008, seq_len=4096),
        _HF.format("meta-llama/Llama-2-7b-hf"),
        6_738_415_616,
        _HF_COUNT.format("meta-llama/Llama-2-7b-hf"),
    ),
    "llama-2-13b": Preset(
        _llama(vocab_size=32000, d_model=5120, n_layers=40, n_heads=40, d_ff=13824, seq_len=4096),
        _HF.format("meta-llama/Llama-2-13b-hf"),
        13_015_864_320,
        _HF_COUNT.format("meta-llama/Llama-2-13b-hf"),
    ),
    "mistral-7b": Preset(
        # Mistral 7B v0.1 (Jiang et al. 2023); its 4096-token sliding window is not modelled:
        # it changes attention FLOPs beyond 4096 tokens, not the parameters.
        _llama(vocab_size=32000, d_model=4096, n_layers=32, n_heads=32, n_kv_heads=8,
               d_ff=14336, seq_len=32768),
        _HF.format("mistralai/Mistral-7B-v0.1"),
        7_241_732_096,
        _HF_COUNT.format("mistralai/Mistral-7B-v0.1"),
    ),
    "tinyllama-1.1b": Preset(
        _llama(vocab_size=32000, d_model=2048, n_layers=22, n_heads=32, n_kv_heads=4,
               d_ff=5632, seq_len=2048),
        _HF.format("TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T"),
        1_100_048_384,
        _HF_COUNT.format("TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T"),
    ),
    "qwen2.5-0.5b": Preset(
        # Qwen2: biases on q, k, v only; tied head; rope_theta 1e6.
        _llama(vocab_size=151936, d_model=896, n_layers=24, n_heads=14, n_kv_heads=2,
               d_ff=4864, seq_len=32768, qkv_bias=True, tied_embeddings=True,
               rope_theta=1_000_000.0, norm_eps=1e-6),
        _HF.format("Qwen/Qwen2.5-0.5B"),
        494_032_768,
        _HF_COUNT.format("Qwen/Qwen2.5-0.5B"),
    ),
    "gemma-2b": Preset(
        # Gemma (Gemma Team 2024): GeGLU, tied head, embeddings scaled by sqrt(d_model),
        # multi-query attention with head_dim 256. Gemma's RMSNorm stores (scale - 1); same count.
        # Paper Table 2 gives 1,981,884,416 non-embedding parameters, equal to ours; its
        # embedding figure (524,550,144) uses a 256,128-row table, the released config has 256,000.
        _llama(vocab_size=256000, d_model=2048, n_layers=18, n_heads=8, n_kv_heads=1,
               head_dim=256, d_ff=16384, seq_len=8192, mlp="geglu", tied_embeddings=True,
               embed_scale=True, norm_eps=1e-6),
        _HF.format("google/gemma-2b"),
        2_506_172_416,
        _HF_COUNT.format("google/gemma-2b"),
    ),
    # One per Hugging Face family (models.hf), each equal to TransformerConfig.from_hf of the
    # checkpoint's config.json (tests/data/hf/, which also gives the source of each count).
    "pythia-160m": Preset(
        # GPT-NeoX (Black et al. 2022): parallel attention + MLP with two LayerNorms, a quarter
        # of each head rotated, erf GELU, biases everywhere, untied head.
        TransformerConfig(vocab_size=50304, d_model=768, n_layers=12, n_heads=12, d_ff=3072, seq_len=2048,
                          tied_embeddings=False, mlp="gelu_exact", position="rope", parallel_residual=True,
                          rotary_fraction=0.25),
        _HF.format("EleutherAI/pythia-160m"), 162_322_944,
        "Biderman et al. 2023 (Pythia), Table 1: 85,056,000 non-embedding + 2 x 50,304 x 768",
    ),
    "gpt-j-6b": Preset(
        # GPT-J (Wang & Komatsuzaki 2021): one LayerNorm feeding parallel attention and MLP,
        # rotary on 64 of 256 dims, no attention biases, MLP and head biases, untied.
        TransformerConfig(vocab_size=50400, d_model=4096, n_layers=28, n_heads=16, d_ff=16384, seq_len=2048,
                          tied_embeddings=False, position="rope", bias=False, norm_bias=True, mlp_bias=True,
                          head_bias=True, parallel_residual=True, shared_norm=True, rotary_fraction=0.25),
        _HF.format("EleutherAI/gpt-j-6b"), 6_050_882_784,
        "GPTJForCausalLM parameter count (the model card's 6,053,381,344 counts the original JAX model)",
    ),
    "llama-3.2-1b": Preset(
        _llama(vocab_size=128256, d_model=2048, n_layers=16, n_heads=32, n_kv_heads=8, head_dim=64, d_ff=8192,
               seq_len=131072, tied_embeddings=True, rope_theta=500000.0),
        _HF.format("meta-llama/Llama-3.2-1B"), 1_235_814_400, _HF_COUNT.format("meta-llama/Llama-3.2-1B"),
    ),
    "qwen3-0.6b": Preset(
        # Qwen3 (Qwen Team 2025): RMSNorm on each q and k head (QK-norm), head_dim 128 > d/h.
        _llama(vocab_size=151936, d_model=1024, n_layers=28, n_heads=16, n_kv_heads=8, head_dim=128,
               d_ff=3072, seq_len=40960, tied_embeddings=True, rope_theta=1_000_000.0, norm_eps=1e-6,
               qk_norm="head"),
        _HF.format("Qwen/Qwen3-0.6B"), 596_049_920, _HF_COUNT.format("Qwen/Qwen3-0.6B"),
    ),
    "gemma-2-2b": Preset(
        # Gemma 2 (Gemma Team 2024b): pre- and post-norms (sandwich), (1 + scale) RMSNorm,
        # attention soft-cap 50 and logit soft-cap 30, 4096-token window on even layers.
        _llama(vocab_size=256000, d_model=2304, n_layers=26, n_heads=8, n_kv_heads=4, head_dim=256,
               d_ff=9216, seq_len=8192, mlp="geglu", tied_embeddings=True, embed_scale=True, norm_eps=1e-6,
               norm_placement="sandwich", norm_offset=True, sliding_window=4096, global_every=2,
               attn_softcap=50.0, final_softcap=30.0),
        _HF.format("google/gemma-2-2b"), 2_614_341_888, "Hugging Face safetensors parameter count (BF16)",
    ),
    "gemma-3-1b": Preset(
        # Gemma 3 (Gemma Team 2025): sandwich norms, QK-norm, 512-token window, every 6th layer global.
        _llama(vocab_size=262144, d_model=1152, n_layers=26, n_heads=4, n_kv_heads=1, head_dim=256,
               d_ff=6912, seq_len=32768, mlp="geglu", tied_embeddings=True, embed_scale=True,
               rope_theta=1_000_000.0, norm_eps=1e-6, norm_placement="sandwich", norm_offset=True,
               qk_norm="head", sliding_window=512, global_every=6),
        _HF.format("google/gemma-3-1b-it"), 999_885_952, "Hugging Face safetensors.total of google/gemma-3-1b-it",
    ),
    "phi-3-mini-4k": Preset(
        # Phi-3 (Abdin et al. 2024): Llama-shaped (fused qkv and gate_up: same counts), 2047-token window.
        _llama(vocab_size=32064, d_model=3072, n_layers=32, n_heads=32, d_ff=8192, seq_len=4096,
               sliding_window=2047),
        _HF.format("microsoft/Phi-3-mini-4k-instruct"), 3_821_079_552, "Hugging Face safetensors parameter count",
    ),
    "olmo-2-7b": Preset(
        # OLMo 2 (OLMo et al. 2024): RMSNorm after attention and MLP (no pre-norm), QK-norm over
        # the whole q and k projections.
        _llama(vocab_size=100352, d_model=4096, n_layers=32, n_heads=32, d_ff=11008, seq_len=4096,
               rope_theta=500000.0, norm_eps=1e-6, norm_placement="post", qk_norm="full"),
        _HF.format("allenai/OLMo-2-1124-7B"), 7_298_617_344, "Hugging Face safetensors.total (F32)",
    ),
    "falcon-7b": Preset(
        # Falcon (Almazrouei et al. 2023): multi-query, one LayerNorm (with bias) feeding parallel
        # attention and MLP, no linear biases, erf GELU, tied head, 71 heads of 64.
        TransformerConfig(vocab_size=65024, d_model=4544, n_layers=32, n_heads=71, n_kv_heads=1, d_ff=18176,
                          seq_len=2048, mlp="gelu_exact", position="rope", bias=False, norm_bias=True,
                          parallel_residual=True, shared_norm=True),
        _HF.format("tiiuae/falcon-7b"), 6_921_720_704, _HF_COUNT.format("tiiuae/falcon-7b"),
    ),
    "starcoder2-3b": Preset(
        # StarCoder2 (Lozhkov et al. 2024): LayerNorm, tanh-GELU two-matrix MLP, biases, GQA, window 4096.
        TransformerConfig(vocab_size=49152, d_model=3072, n_layers=30, n_heads=24, n_kv_heads=2, d_ff=12288,
                          seq_len=16384, position="rope", rope_theta=999999.4420358813, sliding_window=4096),
        _HF.format("bigcode/starcoder2-3b"),
    ),
    "minitron-4b": Preset(
        # Nemotron (Minitron, Muralidharan et al. 2024): LayerNorm1P (1 + scale, with bias),
        # squared-ReLU MLP, half of each head rotated, no linear biases, untied.
        TransformerConfig(vocab_size=256000, d_model=3072, n_layers=32, n_heads=24, n_kv_heads=8, head_dim=128,
                          d_ff=9216, seq_len=4096, tied_embeddings=False, mlp="relu2", position="rope",
                          bias=False, norm_offset=True, norm_bias=True, rotary_fraction=0.5),
        _HF.format("nvidia/Minitron-4B-Base"),
    ),
    # Mixtures of experts (models/data/hf/ holds each config.json; README there gives the sources).
    "mixtral-8x7b": Preset(
        # Mixtral (Jiang et al. 2024, arXiv:2401.04088 §2.1): Mistral 7B's attention, every layer
        # 8 SwiGLU experts of 14336, top-2 softmax router. Paper: 46.7B total, 12.9B active.
        _llama(vocab_size=32000, d_model=4096, n_layers=32, n_heads=32, n_kv_heads=8, d_ff=14336,
               seq_len=32768, rope_theta=1_000_000.0, n_experts=8, experts_per_token=2, aux_loss_coef=0.02),
        _HF.format("mistralai/Mixtral-8x7B-v0.1"), 46_702_792_704,
        "Hugging Face safetensors.total of mistralai/Mixtral-8x7B-v0.1 (46.7B, Jiang et al. 2024)",
    ),
    "qwen3-30b-a3b": Preset(
        # Qwen3-MoE (Qwen Team 2025, arXiv:2505.09388 Table 2): 128 experts of 768, top-8, no
        # shared experts, QK-norm per head. Model card: 30.5B total, 3.3B activated.
        _llama(vocab_size=151936, d_model=2048, n_layers=48, n_heads=32, n_kv_heads=4, head_dim=128,
               d_ff=6144, seq_len=40960, rope_theta=1_000_000.0, norm_eps=1e-6, qk_norm="head",
               n_experts=128, experts_per_token=8, d_ff_expert=768, aux_loss_coef=0.001),
        _HF.format("Qwen/Qwen3-30B-A3B"), 30_532_122_624,
        "GGUF general.parameter_count of Qwen3-30B-A3B (every tensor of the checkpoint), quoted in public code",
    ),
    "olmoe-1b-7b": Preset(
        # OLMoE (Muennighoff et al. 2024, arXiv:2409.02060 Table 1): 64 experts of 1024, top-8,
        # QK-norm over the whole q and k. Paper: 6.9B total, 1.3B active.
        _llama(vocab_size=50304, d_model=2048, n_layers=16, n_heads=16, d_ff=1024, seq_len=4096,
               qk_norm="full", n_experts=64, experts_per_token=8),
        _HF.format("allenai/OLMoE-1B-7B-0924"), 6_919_161_856,
        "Hugging Face safetensors parameter count (F32) of allenai/OLMoE-1B-7B-0924, quoted in public code",
    ),
    "deepseek-v3": Preset(
        # DeepSeek-V3 (DeepSeek-AI 2024, arXiv:2412.19437 §2 and §4.2): MLA (q rank 1536, kv rank 512,
        # 64 rotary dims), first 3 layers dense (18432), then 256 routed experts of 2048 (top-8,
        # sigmoid router) + 1 shared. Report: 671B total, 37B activated, the MTP module excluded.
        _llama(vocab_size=129280, d_model=7168, n_layers=61, n_heads=128, head_dim=128, d_ff=18432,
               seq_len=163840, norm_eps=1e-6, attention_kind="mla", q_lora_rank=1536, kv_lora_rank=512,
               qk_rope_head_dim=64, n_experts=256, experts_per_token=8, n_shared_experts=1, d_ff_expert=2048,
               dense_layers=3, router="sigmoid", aux_loss_coef=0.001),
        _HF.format("deepseek-ai/DeepSeek-V3"), 671_000_000_000,
        "DeepSeek-V3 report (arXiv:2412.19437) abstract and §4.2: 671B total (the main model; rounded)",
        500_000_000,
    ),
    "deepseek-v2-lite": Preset(
        # DeepSeek-V2-Lite (DeepSeek-AI 2024, arXiv:2405.04434 App. B): MLA without q compression,
        # first layer dense, 64 routed experts of 1408 (top-6, softmax) + 2 shared. 15.7B total.
        _llama(vocab_size=102400, d_model=2048, n_layers=27, n_heads=16, head_dim=128, d_ff=10944,
               seq_len=163840, norm_eps=1e-6, attention_kind="mla", kv_lora_rank=512, qk_rope_head_dim=64,
               n_experts=64, experts_per_token=6, n_shared_experts=2, d_ff_expert=1408, dense_layers=1,
               aux_loss_coef=0.001),
        _HF.format("deepseek-ai/DeepSeek-V2-Lite"), 15_706_484_224,
        "Hugging Face safetensors.total of deepseek-ai/DeepSeek-V2-Lite (15.7B, DeepSeek-V2 report App. B)",
    ),
    # Small shapes for tests and quick experiments (not public models).
    "tiny-gpt": Preset(
        TransformerConfig(vocab_size=97, d_model=48, n_layers=2, n_heads=4, d_ff=96, seq_len=16),
        "test shape: GPT-2 style, odd vocabulary",
    ),
    "tiny-llama": Preset(
        _llama(vocab_size=101, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=96, seq_len=16),
        "test shape: Llama style with GQA",
    ),
    "tiny-gemma": Preset(
        _llama(vocab_size=89, d_model=32, n_layers=2, n_heads=2, n_kv_heads=1, head_dim=24,
               d_ff=80, seq_len=16, mlp="geglu", tied_embeddings=True, embed_scale=True),
        "test shape: Gemma style, head_dim != d_model / n_heads",
    ),
    "tiny-moe": Preset(
        _llama(vocab_size=97, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=48, seq_len=16,
               n_experts=4, experts_per_token=2, d_ff_expert=24, n_shared_experts=1, dense_layers=1),
        "test shape: Mixtral/DeepSeekMoE style, one dense layer, 4 experts top-2, one shared",
    ),
    "tiny-mla": Preset(
        _llama(vocab_size=89, d_model=32, n_layers=2, n_heads=4, head_dim=8, d_ff=48, seq_len=16,
               attention_kind="mla", q_lora_rank=16, kv_lora_rank=12, qk_rope_head_dim=4, v_head_dim=6,
               n_experts=4, experts_per_token=1, d_ff_expert=16, router="sigmoid"),
        "test shape: DeepSeek-V3 style, latent attention and a sigmoid-routed MoE",
    ),
}


def names() -> tuple[str, ...]:
    """All preset names."""
    return tuple(_PRESETS)


def public_names() -> tuple[str, ...]:
    """Presets that copy a public model (those with a published parameter count)."""
    return tuple(n for n, p in _PRESETS.items() if p.published_params is not None)


def info(name: str) -> Preset:
    """The preset with its source and published parameter count."""
    if not isinstance(name, str) or name not in _PRESETS:
        raise ValueError(f"unknown preset {name!r}; valid: {', '.join(_PRESETS)}")
    return _PRESETS[name]


def get(name: str, **overrides: Any) -> TransformerConfig:
    """The named config, with fields replaced by ``overrides`` (validated again).

    Raises:
      ValueError: unknown preset name (the valid ones are listed), unknown field, invalid value.
    """
    cfg = info(name).config
    return cfg.replace(**overrides) if overrides else cfg
