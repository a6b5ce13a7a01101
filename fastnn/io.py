"""Saving and loading networks: fastnn's versioned format.

A saved network is a NumPy ``.npz`` archive (a zip file; no pickles) with two
members:

- ``meta``: a 0-d unicode array holding JSON
  ``{"format": "fastnn.Network", "version": 1, "sizes": [...],
  "hidden": [...], "output": ..., "cost": ..., "dtype": "float32"|"float64",
  "init": ..., "n_params": P, "fastnn_version": ...}``
- ``params``: the flat parameter buffer, 1-D, of the network's dtype, stored
  exactly (``W_0, b_0, W_1, b_1, ...``, each W row-major (out, in)).

Saving writes a temporary file in the target's directory, flushes and fsyncs
it, then renames it over the target, so a crash never leaves a half-written
file. Loading checks every field and raises ValueError for a truncated, corrupt
or foreign file.
"""
import json
import os
import tempfile

import numpy as np

FORMAT = "fastnn.Network"
VERSION = 1


def save(net, path):
    """Save ``net`` to ``path`` atomically (the name is used exactly as given)."""
    from fastnn import __version__
    path = os.fspath(path)
    meta = {"format": FORMAT, "version": VERSION, "sizes": list(net.sizes),
            "hidden": list(net.hidden), "output": net.output, "cost": net.cost,
            "dtype": net.dtype.name, "init": net.init, "n_params": int(net.n_params),
            "fastnn_version": __version__}
    atomic_write(path, lambda fh: np.savez(fh, meta=np.array(json.dumps(meta)), params=net.params))


def _file_mode(path):
    """Mode for the file as open(path, 'w') would leave it: the existing file's mode, or
    0o666 minus the umask (mkstemp's 0o600 would surprise users)."""
    try:
        return os.stat(path).st_mode & 0o7777
    except OSError:
        pass
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return 0o666 & ~old


def atomic_write(path, write, *, prefix=".fastnn-"):
    """Create or replace ``path`` atomically: ``write(fh)`` fills a temporary file (binary)
    in the same directory, which is flushed, fsynced, given open()'s permissions and renamed
    over ``path``. On any error the temporary file is removed and ``path`` is untouched."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    mode = _file_mode(path)
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def load(path):
    """Load a network saved by ``Network.save``."""
    from fastnn.network import Network
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"No saved network at {path!r}.")
    try:
        with np.load(path, allow_pickle=False) as data:
            if set(data.files) != {"meta", "params"}:
                raise ValueError(f"members {sorted(data.files)} instead of ['meta', 'params']")
            meta = json.loads(str(data["meta"][()]))
            params = data["params"]
    except Exception as exc:  # zipfile and numpy raise many types for corrupt input
        raise ValueError(f"{path!r} is not a readable fastnn network file ({type(exc).__name__}: "
                         f"{exc}). It may be truncated, corrupt, or saved by another program.") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{path!r} is not a fastnn network file (format "
                         f"{meta.get('format') if isinstance(meta, dict) else None!r}, expected {FORMAT!r}).")
    if meta.get("version") != VERSION:
        raise ValueError(f"{path!r} has format version {meta.get('version')!r}; this fastnn reads "
                         f"version {VERSION}. Upgrade fastnn to load it.")
    sizes = meta.get("sizes")
    if (not isinstance(sizes, list) or len(sizes) < 2
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in sizes)):
        raise ValueError(f"{path!r} describes an invalid network: sizes {sizes!r}.")
    n_params = sum(o * (i + 1) for i, o in zip(sizes[:-1], sizes[1:]))
    if params.ndim != 1 or params.shape[0] != n_params or params.dtype.name != meta.get("dtype"):
        raise ValueError(f"{path!r} holds parameters of shape {params.shape} and dtype {params.dtype}; "
                         f"the network {sizes} ({meta.get('dtype')}) needs ({n_params},).")
    state = {k: meta.get(k) for k in ("sizes", "hidden", "output", "cost", "dtype")}
    state["init"] = meta.get("init", "default")
    state["params"] = params
    try:
        return Network._from_state(state)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path!r} describes an invalid network: {exc}") from None
