"""Training: memory-mapped slice data, the GAN step and the trainer for one study variant."""

from vce.training.data import SeededBatchSampler, SliceDataset, check_split
from vce.training.monitor import VAL_COLUMNS, gan_health
from vce.training.montage import montage_indices
from vce.training.state import default_state_dir
from vce.training.step import LOSS_COLUMNS, GanStep
from vce.training.trainer import GanTrainer, train_variant

__all__ = [
    "LOSS_COLUMNS",
    "VAL_COLUMNS",
    "GanStep",
    "GanTrainer",
    "SeededBatchSampler",
    "SliceDataset",
    "check_split",
    "default_state_dir",
    "gan_health",
    "montage_indices",
    "train_variant",
]
