# .venv-infer-peers (--peers only): OpenVINO + NNCF, ONNX Runtime and PyTorch 2.13, the int8
# inference peers of bench/infer_compare.py and bench/infer_trained.py (bench/peers/infer_peers.py).
[[ $peers == 1 ]] || return 0
make_venv .venv-infer-peers scripts/requirements/infer-peers.txt
