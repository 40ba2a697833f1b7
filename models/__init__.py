"""The Flax transformer and the one config type everything in scaling-planner reads."""

from models import presets
from models.config import TransformerConfig, field_names
from models.layout import Layout
from models.train import abstract_model, adamw, init_train_state, lm_loss, make_train_step, train_step
from models.transformer import Transformer

__all__ = [
    "Layout",
    "Transformer",
    "TransformerConfig",
    "abstract_model",
    "adamw",
    "field_names",
    "init_train_state",
    "lm_loss",
    "make_train_step",
    "presets",
    "train_step",
]
