# .venv-mxnet: MXNet's ImageRecordIter, the oracle that the int8 contract's test compares against.
make_venv .venv-mxnet scripts/requirements/mxnet.txt
