"""scaling-planner: what a transformer costs, and what shape to train.

>>> from models import presets
>>> from planner import count_params, count_flops
>>> count_params(presets.get("llama-2-7b")).total
6738415616
>>> count_flops(presets.get("gpt2"), convention="6nd", mode="train").total == 6 * 124439808 * 1024
True
"""

from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("scaling-planner")
except _metadata.PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+source"

from models.layout import Layout
from planner.flops import (
    CONVENTIONS,
    FLOP_COMPONENTS,
    FlopCount,
    Matmul,
    count_flops,
    count_flops_many,
    forward_matmuls,
    recompute_flops,
    step_matmuls,
)
from planner.collectives import Collective, bytes_per_axis, collectives
from planner.laws import LAWS, FitResult, ScalingLaw, fit_scaling_law, get_law, load_dataset, load_runs_csv
from planner.laws import MOE_LAWS, MoEScalingLaw, get_moe_law
from planner.memory import MemoryEstimate, estimate_memory, kv_cache_bytes
from planner.params import PARAM_COMPONENTS, ParamCount, count_params, param_components
from planner.layouts import LayoutResult, LayoutSearch, search_layouts
from planner.published import PublishedRun, published_runs
from planner.search import DEFAULT_BASE, Plan, deepseek_batch_tokens, frontier, inference_aware, plan, plan_note
from planner.timing import ClusterStep, ComponentTime, StepTime, cluster_step, roofline
from planner.targets import (
    ModelProgram,
    Target,
    TargetReport,
    TargetValidation,
    compile_for_target,
    compile_model,
    parse_target,
)
from planner.validation import (
    CollectiveReport,
    MemoryReport,
    ValidationReport,
    default_grid,
    validate,
    validate_layout,
    validate_memory,
)

__all__ = [
    "__version__",
    "Layout",
    "Collective",
    "CollectiveReport",
    "bytes_per_axis",
    "collectives",
    "validate_layout",
    "CONVENTIONS",
    "FLOP_COMPONENTS",
    "FlopCount",
    "Matmul",
    "PARAM_COMPONENTS",
    "ParamCount",
    "count_flops",
    "count_flops_many",
    "count_params",
    "forward_matmuls",
    "param_components",
    "step_matmuls",
    "ComponentTime",
    "DEFAULT_BASE",
    "FitResult",
    "LAWS",
    "Plan",
    "ScalingLaw",
    "deepseek_batch_tokens",
    "fit_scaling_law",
    "frontier",
    "get_law",
    "inference_aware",
    "load_dataset",
    "load_runs_csv",
    "plan",
    "MemoryEstimate",
    "StepTime",
    "ValidationReport",
    "estimate_memory",
    "kv_cache_bytes",
    "roofline",
    "ClusterStep",
    "cluster_step",
    "LayoutResult",
    "LayoutSearch",
    "search_layouts",
    "PublishedRun",
    "published_runs",
    "plan_note",
    "default_grid",
    "validate",
    "ModelProgram",
    "Target",
    "TargetReport",
    "TargetValidation",
    "compile_for_target",
    "compile_model",
    "parse_target",
    "MemoryReport",
    "recompute_flops",
    "validate_memory",
    "MOE_LAWS",
    "MoEScalingLaw",
    "get_moe_law",
]
