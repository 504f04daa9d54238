"""The resource limits a run depends on, checked when it starts (one line naming the limit and the
remedy) instead of failing later: open files for the DataLoader workers asked for, and address
space for PyTorch and a training run. Standard library only: `utils/__init__.py` checks the
address space before anything imports PyTorch, whose import aborts below it."""
import sys

try:
    import resource
except ImportError:  # not POSIX: no limits to read
    resource = None

GIB = 2 ** 30
# Measured with torch 2.14 on Linux (x86-64): importing it and a tiny forward pass map about 3.4 GB,
# below which `import torch` aborts (std::bad_alloc); a tiny training run needs between 4 and 5 GB.
IMPORT_ADDRESS_SPACE = int(3.5 * GIB)
TRAINING_ADDRESS_SPACE = 5 * GIB


class LimitError(Exception):
    """A resource limit of this process is too low for what was asked; the message says what to change."""


def _soft(limit):
    """The soft `limit` of this process, None when unlimited (callers check that `resource` exists)."""
    soft = resource.getrlimit(limit)[0]
    return None if soft == resource.RLIM_INFINITY else soft


def check_address_space(needed, what):
    """LimitError when the address-space limit (`ulimit -v`) is below `needed` bytes, which `what` needs."""
    soft = _soft(resource.RLIMIT_AS) if resource is not None else None
    if soft is not None and soft < needed:
        raise LimitError(f"this process may map only {soft / GIB:.1f} GiB of memory (ulimit -v), and {what} "
                         f"needs about {needed / GIB:.1f} GiB: raise the limit (ulimit -v "
                         f"{-(-needed // 1024)}, or unlimited)")


def check_open_files(workers, flag="--workers", in_process=True):
    """DataLoader or process-pool workers hand their results over through file descriptors: below a
    limit of open files they fail (EMFILE) or stall. Raise the soft limit where the hard one allows,
    else LimitError with the remedy (`in_process`: whether 0 workers is an option)."""
    needed = 32 + 16 * workers
    soft = _soft(resource.RLIMIT_NOFILE) if resource is not None else None
    if workers == 0 or soft is None or soft >= needed:
        return
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard == resource.RLIM_INFINITY or hard >= needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
        return
    raise LimitError(f"{flag} {workers}: this process may open only {soft} files (ulimit -n), and "
                     f"{workers} workers need about {needed} to hand their results over; raise "
                     f"the limit (ulimit -n {needed}) or give fewer {flag}"
                     + (" (0: work in this process)" if in_process else ""))


def exit_if_torch_cannot_load():
    """Exit with one line (status 2) when importing PyTorch would abort for want of address space."""
    if "torch" in sys.modules:
        return
    try:
        check_address_space(IMPORT_ADDRESS_SPACE, "PyTorch")
    except LimitError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
