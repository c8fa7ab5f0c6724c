"""Training data: the dataset (selection, teacher scores, seeded per-epoch sampling), the task-homogeneous
batch sampler and the collator that tokenises a batch with its task's instructions."""
from .collator import EmbedderCollator
from .dataset import TrainDataArgs, TrainDataset, expand_train_paths
from .sampler import TaskBatchSampler

__all__ = ["EmbedderCollator", "TaskBatchSampler", "TrainDataArgs", "TrainDataset", "expand_train_paths"]
