"""dslc.catalogue: the signatures and typing rules of every callee a `.nn` file may name.

One module per family; this package gathers the lookup tables the checker uses.
"""

from dslc.catalogue.functions import FUNCTIONS, FnDef
from dslc.catalogue.initializers import INITIALIZERS
from dslc.catalogue.layers import LAYERS, LayerDef
from dslc.catalogue.losses import LOSSES
from dslc.catalogue.metrics import METRICS
from dslc.catalogue.optimizers import OPTIMIZERS
from dslc.catalogue.regularizers import REGULARIZERS
from dslc.catalogue.schedules import SCHEDULES
from dslc.catalogue.train import EARLY_STOPPING, TRAIN_KEYS

# Every lower-case callee that yields a tensor: functions, losses and metrics.
FUNCTION_LIKE: dict[str, FnDef] = {**FUNCTIONS, **LOSSES, **METRICS}

# Metrics that are not also losses: they have no gradient.
METRIC_ONLY = frozenset(n for n in METRICS if n not in LOSSES)

__all__ = [
    "EARLY_STOPPING",
    "FUNCTIONS",
    "FUNCTION_LIKE",
    "INITIALIZERS",
    "LAYERS",
    "LOSSES",
    "METRICS",
    "METRIC_ONLY",
    "OPTIMIZERS",
    "REGULARIZERS",
    "SCHEDULES",
    "TRAIN_KEYS",
    "FnDef",
    "LayerDef",
]
