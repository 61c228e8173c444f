"""RUC retraining (Park et al., CVPR 2021): robust learning on clustering pseudo-labels."""

from core.ruc.perf import PerfOptions
from core.ruc.schedules import Schedule, resolve_schedule
from core.ruc.state import RucState, load_state, save_state
from core.ruc.trainer import RucOutput, predict_ensemble, train_ruc

__all__ = [
    "PerfOptions",
    "RucOutput",
    "RucState",
    "Schedule",
    "load_state",
    "predict_ensemble",
    "resolve_schedule",
    "save_state",
    "train_ruc",
]
