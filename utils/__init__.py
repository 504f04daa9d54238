"""The training system (engine, recipes, checkpoints, run folders, reports) and the tools around a trained model."""
