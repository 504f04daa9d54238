"""Tools around a trained model (`python -m utils.tools {predict,heatmaps,export,inspect}`) and the
speed benchmark (`python -m utils.tools.benchmark`). They build on the training system in `utils`
(checkpoint loading, the engine) but nothing there imports them."""


class ToolError(Exception):
    """A problem with a tool's command line or inputs; the message says what and where."""
