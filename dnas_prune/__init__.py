"""dnas_prune: differentiable block + channel pruning of ResNets under an exact MACs/params budget.

Layered as the pipeline, each part importing only those below: ``models/`` (ResNets, spec, exact cost),
``device/`` (precision, memory format, latency timing), ``io/`` and ``train/``, ``search/`` (gates, supernet, cost,
budget, Pruner), ``finalize``, ``report/``, ``stages`` (one function per stage), ``config``
(the TOML recipe), ``pipeline`` and ``cli/``.
``dnas_prune.search`` is the search stage's function; reach the subpackage's modules with ``from dnas_prune.search.X
import Y``.
"""

from .device.allocator import keep_freed_memory
from .device.timing import compare_latency, measure_latency
from .errors import BudgetError, CheckpointError, DataError, DnasPruneError, GatingError
from .finalize import finalize
from .io.export import export, read_export_info
from .io.pruned import load_pruned, load_pruned_with_metadata, save_pruned
from .models import MODEL_NAMES, build_model, create_model, spec_of
from .models.cost import Cost, count_cost
from .report.profile import profile_model
from .search.budget import cost_floor, project_to_budget, solve_offset
from .search.fold import fold_gate_into_bn
from .search.gate_optimizer import SharedScaleAdam
from .search.hooks import load_supernet
from .search.pruner import Pruner, SearchConfig, refit_bn
from .search.supernet import Supernet
from .stages import search
from .train.loop import TrainConfig, Trainer

__version__ = "0.1.0"

__all__ = [
    "MODEL_NAMES", "Pruner", "BudgetError", "CheckpointError", "Cost", "DataError", "DnasPruneError",
    "GatingError", "SearchConfig", "SharedScaleAdam", "Supernet", "TrainConfig", "Trainer", "build_model", "compare_latency",
    "cost_floor", "count_cost", "create_model", "export", "finalize", "fold_gate_into_bn", "keep_freed_memory",
    "load_pruned", "load_pruned_with_metadata", "load_supernet", "measure_latency", "profile_model", "project_to_budget",
    "read_export_info", "refit_bn", "save_pruned", "search", "solve_offset", "spec_of",
]
