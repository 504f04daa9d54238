"""The training system (engine, recipes, checkpoints, run folders, reports) and the tools around a trained model."""
from data_preprocessing.limits import exit_if_torch_cannot_load

exit_if_torch_cannot_load()
