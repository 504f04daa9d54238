"""An export's `model_info.json`, the file `export` writes beside its model files: reading it and
checking that it describes what rebuilding the model and its preprocessing needs.
"""
from pathlib import Path

from models.weights import CheckpointError

from .settings import EXPORT_INFO_FILE, UsageError, check, read_json_file


def read_model_info(model_path):
    """The checked `model_info.json` beside an exported model file, as a dict.

    CheckpointError (one line naming the file) when it is missing, is not JSON or lacks what
    rebuilding the model and its preprocessing needs.
    """
    json_path = Path(model_path).with_name(EXPORT_INFO_FILE)
    if not json_path.exists():
        raise CheckpointError(f"{model_path}: {json_path} is missing; keep the export's {EXPORT_INFO_FILE} "
                              f"beside its model file")
    try:
        meta = read_json_file(json_path)
    except UsageError as error:
        raise CheckpointError(str(error)) from None
    problem = model_info_problem(meta)
    if problem:
        raise CheckpointError(f"{json_path}: {problem}")
    return meta


def model_info_problem(meta):
    """What makes `meta` unusable as an export's description, or None."""
    if not isinstance(meta, dict):
        return f"holds no JSON object; it is not an export's {EXPORT_INFO_FILE}"
    classes = meta.get("classes")
    if not isinstance(classes, list) or len(classes) < 2 or not all(isinstance(c, str) for c in classes) \
            or len(set(classes)) != len(classes):
        return f"'classes' must be a list of at least 2 distinct class names, got {classes!r:.60}"
    if meta.get("num_classes", len(classes)) != len(classes):
        return f"'num_classes' is {meta['num_classes']!r} but 'classes' lists {len(classes)}"
    if meta.get("arch") != "base":
        return f"'arch' must be \"base\" (an export holds the base branch), got {meta.get('arch')!r}"
    digests = meta.get("sha256", {})
    if not isinstance(digests, dict) or not all(
            isinstance(digest, str) and len(digest) == 64 and not digest.strip("0123456789abcdefABCDEF")
            for digest in digests.values()):
        return f"'sha256' must map file names to 64-digit hex SHA-256 digests, got {digests!r:.60}"
    try:
        check({key: meta[key] for key in ("dataset",) if meta.get(key) is not None}
              | {key: meta.get(key) for key in ("size", "image_size", "augmentation")}, label=repr)
    except UsageError as error:
        return f"invalid settings: {error}"
    return None

