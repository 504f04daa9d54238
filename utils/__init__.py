"""Training engine, recipes, checkpointing, logging and the tools around a trained model."""
