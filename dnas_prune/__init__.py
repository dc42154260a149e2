"""dnas_prune: differentiable block + channel pruning of ResNets under an exact MACs/params budget.

The pipeline, bottom to top: models -> gates/supernet -> cost/budget -> pruner/search -> finalize -> export.
"""

from .budget import cost_floor, project_to_budget, solve_offset
from .cost import Cost, count_cost
from .errors import BudgetError, CheckpointError, DataError, DnasPruneError, GatingError
from .export import export
from .finalize import finalize, fold_gate_into_bn
from .gate_optimizer import SharedScaleAdam
from .models import MODEL_NAMES, build_model, create_model, spec_of
from .pruned_io import load_pruned, load_pruned_with_metadata, save_pruned
from .profile import compare_latency, measure_latency, profile_model
from .pruner import Pruner, SearchConfig, refit_bn
from .search import load_supernet, search
from .supernet import Supernet
from .training import TrainConfig, Trainer

__version__ = "0.1.0"

__all__ = [
    "MODEL_NAMES", "Pruner", "BudgetError", "CheckpointError", "Cost", "DataError", "DnasPruneError",
    "GatingError", "SearchConfig", "SharedScaleAdam", "Supernet", "TrainConfig", "Trainer", "build_model", "compare_latency",
    "cost_floor", "count_cost", "create_model", "export", "finalize", "fold_gate_into_bn", "load_pruned",
    "load_pruned_with_metadata", "load_supernet", "measure_latency", "profile_model", "project_to_budget",
    "refit_bn", "save_pruned", "search", "solve_offset", "spec_of",
]
