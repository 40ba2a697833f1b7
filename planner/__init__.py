"""scaling-planner: what a transformer costs, and what shape to train.

>>> from models import presets
>>> from planner import count_params
>>> count_params(presets.get("llama-2-7b")).total
6738415616
"""

from planner.params import PARAM_COMPONENTS, ParamCount, count_params, param_components

__all__ = ["PARAM_COMPONENTS", "ParamCount", "count_params", "param_components"]
