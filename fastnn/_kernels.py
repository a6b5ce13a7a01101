"""Imports the compiled kernels, with a message that says how to fix a missing build."""
try:
    from fastnn import _core, _blas  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised only on broken installs
    import os

    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    in_repo = os.path.exists(os.path.join(here, "src", "fastnn", "_core.pyx"))
    hint = (
        "You are importing fastnn from its source tree, where the Cython kernels are not "
        "built. Install it (`pip install .`, and again after any change under src/) and run "
        "Python from another directory, or run pytest with --import-mode=importlib."
        if in_repo else
        "Reinstall fastnn (`pip install --force-reinstall fastnn`)."
    )
    raise ImportError(f"fastnn's compiled kernels (fastnn._core) could not be imported from "
                      f"{os.path.dirname(os.path.abspath(__file__))}. {hint}") from exc
