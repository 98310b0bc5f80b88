"""Per-image CPU latency of one model three ways: eager PyTorch (``detseg.load_model`` on the
checkpoint), ONNX Runtime on its ``.onnx`` export and ``torch.compile`` (inductor) of its ``.pt2``
export, for FCN-8s, Faster R-CNN and Mask R-CNN (ResNet-50, the R-CNNs in torchvision's FPN recipe).

Each call is the whole predictor: reading nothing (images are decoded beforehand), the data
pipeline's resize, the network, post-processing and, for Mask R-CNN, pasting the masks. The same
coco_tiny photos go through every backend (synthetic stand-ins without ../shared); every backend's
results are checked against eager (``detseg.export_parity.parity_problems``): a backend that does not
hold parity is reported and never made the default. The weights are random (seeded): no trained
COCO weights can be downloaded here; timings depend on architecture and image size, and the
randomly initialised detectors still run the full RPN, 1000 proposals and NMS.
"""
from __future__ import annotations

import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._report import base_parser, finish, markdown_table  # noqa: E402

MODELS = {  # name -> (config, overrides)
    "fcn8s_r50": ("fcn8s_resnet50_coco", []),
    "faster_rcnn_r50_fpn": ("faster_rcnn_r50_fpn_coco", []),
    "mask_rcnn_r50_fpn": ("mask_rcnn_r50_fpn_coco", []),
}
QUICK = {"fcn8s_r18": ("fcn8s_resnet18_shapes", [])}


def photos(n: int) -> list:
    from detseg.export.parity import synthetic_photo
    folder = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared",
                          "data", "coco_tiny", "val2017")
    if os.path.isdir(folder):
        from detseg.data.io import read_image
        return [read_image(os.path.join(folder, f)) for f in sorted(os.listdir(folder))[:n]]
    return [synthetic_photo((300 + 17 * i, 400 - 13 * i)) for i in range(n)]


def checkpoint(folder: str, config: str, overrides: list) -> str:
    import torch

    from detseg.config import load_config, to_dict
    from detseg.modeling.model import build_model
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cfg = load_config(os.path.join(root, "configs", config + ".yaml"), overrides)
    cfg.model.backbone.weights = None
    torch.manual_seed(0)
    names = [f"class{i}" for i in range(80)]
    model = build_model(cfg, len(names))
    path = os.path.join(folder, config + ".pth")
    torch.save({"model": model.state_dict(), "config": to_dict(cfg), "class_names": names}, path)
    return path


def per_image(predictor, images, warmup: int) -> list[float]:
    """Wall seconds of each image's call, after ``warmup`` calls on the first image."""
    for _ in range(warmup):
        predictor(images[0])
    times = []
    for im in images:
        t = time.perf_counter()
        predictor(im)
        times.append(time.perf_counter() - t)
    return times


def main(argv=None) -> int:
    p = base_parser(__doc__)
    p.add_argument("--images", type=int, default=8, help="coco_tiny photos per backend")
    p.add_argument("--models", nargs="*", help=f"subset of {', '.join(MODELS)}")
    args = p.parse_args(argv)
    import statistics

    from detseg import load_model
    from detseg.export import Traced
    from detseg.export.parity import compare_predictions, parity_problems
    from detseg.export.runtime import ExportedPredictor
    models = QUICK if args.quick else {k: v for k, v in MODELS.items() if not args.models or k in args.models}
    images = photos(2 if args.quick else args.images)
    figures: dict = {"ms": {}, "speedup": {"onnxruntime_vs_eager": {}, "compile_vs_eager": {}},
                     "parity": {}, "export_s": {}, "compile_first_call_s": {}}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, (config, overrides) in models.items():
            eager = load_model(checkpoint(tmp, config, overrides), device="cpu")
            t0 = time.perf_counter()
            traced = Traced(eager)
            onnx_path, pt2_path = os.path.join(tmp, name + ".onnx"), os.path.join(tmp, name + ".pt2")
            traced.write(onnx_path, "onnx")
            traced.write(pt2_path, "pt2")
            figures["export_s"][name] = time.perf_counter() - t0
            backends = {"eager": eager, "onnxruntime": ExportedPredictor(onnx_path),
                        "compile": ExportedPredictor(pt2_path, compile=True)}
            t0 = time.perf_counter()
            backends["compile"](images[0])  # compiles (dynamic shapes: once)
            figures["compile_first_call_s"][name] = time.perf_counter() - t0
            reference = [eager(im) for im in images]
            ms, parity = {}, {}
            for backend, predictor in backends.items():
                ms[backend] = 1000 * statistics.median(per_image(predictor, images, warmup=1))
                if backend != "eager":
                    problems = [q for im, ref in zip(images, reference)
                                for q in parity_problems(compare_predictions(ref, predictor(im)))]
                    parity[backend] = problems[0] if problems else "holds"
            figures["ms"][name] = ms
            figures["parity"][name] = parity
            figures["speedup"]["onnxruntime_vs_eager"][name] = ms["eager"] / ms["onnxruntime"]
            figures["speedup"]["compile_vs_eager"][name] = ms["eager"] / ms["compile"]
            rows.append([name, f"{ms['eager']:.0f}", f"{ms['onnxruntime']:.0f}", f"{ms['compile']:.0f}",
                         f"{ms['eager'] / ms['onnxruntime']:.2f}x", f"{ms['eager'] / ms['compile']:.2f}x",
                         parity["onnxruntime"], parity["compile"]])
            print(rows[-1], flush=True)
    body = markdown_table(["model", "eager ms", "ONNX Runtime ms", "torch.compile ms", "ORT vs eager",
                           "compile vs eager", "ORT parity", "compile parity"], rows)
    body += (f"\n\nMedian per-image latency over {len(images)} coco_tiny photos (each backend warmed up "
             f"on the first photo; torch.compile's first call, which compiles, is not counted: "
             + ", ".join(f"{k} {v:.0f} s" for k, v in figures["compile_first_call_s"].items())
             + "). Export (trace, ONNX and .pt2) took "
             + ", ".join(f"{k} {v:.0f} s" for k, v in figures["export_s"].items()) + ".")
    finish(args, "export", "Export: eager vs ONNX Runtime vs torch.compile (CPU, per image)", body, figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
