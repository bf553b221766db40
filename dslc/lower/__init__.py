"""Lowering: the checked model to IR forward graphs, training and evaluation steps."""

from dslc.lower.forward import Forward, lower_forward
from dslc.lower.functions import FUNCTION_LOWERINGS, register_fn
from dslc.lower.init import init_array, initial_state, optimizer_state
from dslc.lower.layers import LAYER_LOWERINGS, LayerCall, LayerResult, register_layer
from dslc.lower.optimizers import slot_names
from dslc.lower.schedules import cosine_rate
from dslc.lower.step import (
    StateLayout,
    build_eval_step,
    build_inference,
    build_train_step,
    state_layout,
)

__all__ = [
    "FUNCTION_LOWERINGS",
    "LAYER_LOWERINGS",
    "Forward",
    "LayerCall",
    "LayerResult",
    "StateLayout",
    "build_eval_step",
    "build_inference",
    "build_train_step",
    "cosine_rate",
    "init_array",
    "initial_state",
    "lower_forward",
    "optimizer_state",
    "register_fn",
    "register_layer",
    "slot_names",
    "state_layout",
]
