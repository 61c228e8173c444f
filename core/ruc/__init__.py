"""RUC retraining (Park et al., CVPR 2021): robust learning on clustering pseudo-labels."""

from core.ruc.state import RucState, load_state, save_state
from core.ruc.trainer import PerfOptions, RucOutput, predict_ensemble, train_ruc

__all__ = [
    "PerfOptions",
    "RucOutput",
    "RucState",
    "load_state",
    "predict_ensemble",
    "save_state",
    "train_ruc",
]
