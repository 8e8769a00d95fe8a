"""Training: memory-mapped slice data and the GAN trainer for one study variant."""

from vce.training.data import SeededBatchSampler, SliceDataset, check_split
from vce.training.trainer import LOSS_COLUMNS, montage_indices, train_variant

__all__ = ["LOSS_COLUMNS", "SeededBatchSampler", "SliceDataset", "check_split", "montage_indices", "train_variant"]
