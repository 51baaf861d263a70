# .venv: PyTorch 2 (the CPU build on disk) with NumPy 2 and pytest, for the Python package's tests
# (ctest `python_torch2`), and scikit-build-core and auditwheel for its wheel (`python_wheel`).
# The package itself is not installed here: python_torch2 imports the build tree's (built by
# setup's CMake step; the same CPython 3.11 ABI), and python_wheel builds, repairs and installs
# the wheel in a fresh environment of its own, so setup stays a matter of installing wheels.
make_venv .venv scripts/requirements/python.txt
