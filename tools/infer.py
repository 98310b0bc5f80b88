"""Run a trained detseg model on images, folders, globs, videos or a webcam.

    python tools/infer.py --weights runs/x/best.pth --input photo.jpg
    python tools/infer.py --weights runs/x/best.pth --input images/ --save-txt
    python tools/infer.py --weights runs/x/best.pth --input "shots/*.png" --score-threshold 0.5
    python tools/infer.py --weights runs/x/best.pth --input clip.mp4
    python tools/infer.py --weights runs/x/best.pth --input 0 --show        # webcam 0

Writes into --output (default runs/infer/<n>): annotated images (or video), results.json in COCO
results format (image ids from --ann-file when the images belong to a COCO dataset, else 1..N in
input order, listed in images.json) and, with --save-txt, labels/<name>.txt per image. A panoptic
model's images also give panoptic.json and panoptic/<name>.png in the COCO panoptic format
(segment ids as R + 256 G + 256^2 B, the JSON's segments_info naming each id's category). The exit
status is 1 when any input could not be read (each is reported), 2 for bad arguments.
"""
from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import sys
import time
from typing import Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from detseg.data.io import DataError  # noqa: E402
from detseg.engine.checkpoint import CheckpointError  # noqa: E402
from detseg.utils import parse_once  # noqa: E402

logger = logging.getLogger("detseg.infer")


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", required=True, help="a detseg checkpoint (config and classes inside)")
    p.add_argument("--input", required=True, help="image, folder, glob, video file or webcam index")
    p.add_argument("--output", help="output folder (default: runs/infer/<n>); an existing one only "
                   "when empty or holding an earlier infer.py output")
    p.add_argument("--overwrite", action="store_true",
                   help="write into an output folder that holds other files (same names are replaced)")
    p.add_argument("--config", help="config replacing the checkpoint's own (architecture must match)")
    p.add_argument("--score-threshold", type=float, default=0.5)
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--half", action="store_true", help="fp16 autocast (CUDA only)")
    p.add_argument("--show", action="store_true", help="display results (needs a display)")
    p.add_argument("--save-txt", action="store_true", help="labels/<name>.txt per image")
    p.add_argument("--ann-file", help="COCO file the images belong to: results use its image ids")
    p.add_argument("--max-frames", type=int, help="stop a video or webcam after this many frames")
    p.add_argument("--backend", choices=["auto", "eager", "onnxruntime"], default="auto",
                   help="how a .pth checkpoint runs: eager PyTorch, or ONNX Runtime on its export (made "
                        "once, cached); auto: ONNX Runtime (faster on CPU, BENCHMARKS.md) when its export "
                        f"is cached or the run has {ORT_MIN_IMAGES}+ images, else eager")
    return p


# ONNX Runtime ran the R50 models 1.2-1.3x faster than eager on CPU (BENCHMARKS.md, "Export");
# exporting costs about 30-60 s once, which this many images pay back.
ORT_MIN_IMAGES = 200


def choose_backend(args, kind: str, what) -> str:
    """``eager`` or ``onnxruntime`` for this run (``--backend``; see its help).

    Raises:
        UsageError: ``--backend onnxruntime`` with options only eager runs support.
    """
    from detseg.export.format import is_exported
    from detseg.utils import UsageError
    if is_exported(args.weights):
        return "exported"
    blockers = [reason for reason, present in (
        ("--config", args.config), ("--half", args.half),
        ("a GPU device", args.device not in ("auto", "cpu"))) if present]
    if args.backend == "onnxruntime" and blockers:
        raise UsageError(f"--backend onnxruntime runs the checkpoint's own architecture on the CPU; "
                         f"drop {blockers[0]} or use --backend eager")
    if args.backend != "auto":
        return args.backend
    if blockers or kind == "webcam" or not os.path.isfile(args.weights):
        return "eager"  # (a missing file is then load_model's one-line error)
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return "eager"
    from detseg.export.cache import cached_path
    count = len(what) if kind == "images" else _frame_count(what)
    return "onnxruntime" if os.path.isfile(cached_path(args.weights)) or count >= ORT_MIN_IMAGES else "eager"


def _frame_count(path: str) -> int:
    import cv2
    cap = cv2.VideoCapture(path)
    try:
        return int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    finally:
        cap.release()


def classify_input(text: str) -> tuple[str, object]:
    """("webcam", index) | ("video", path) | ("images", [paths]); DataError when nothing matches."""
    from detseg.data.video import VIDEO_EXTENSIONS
    if text.isdigit() and not os.path.exists(text):
        return "webcam", int(text)
    if os.path.isdir(text):
        files = sorted(os.path.join(text, f) for f in os.listdir(text)
                       if os.path.isfile(os.path.join(text, f)) and not f.startswith("."))
        if not files:
            raise DataError(f"{text}: folder holds no files")
        return "images", files
    if os.path.isfile(text):
        return ("video", text) if text.lower().endswith(VIDEO_EXTENSIONS) else ("images", [text])
    matches = sorted(f for f in glob.glob(text) if os.path.isfile(f))
    if not matches:
        raise DataError(f"{text}: no such file, folder or matching files")
    return "images", matches


class Display:
    """cv2.imshow when a display exists; a single warning otherwise (headless OpenCV, no $DISPLAY)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled

    def show(self, rgb) -> bool:
        """False when the user asked to quit (q or Esc)."""
        if not self.enabled:
            return True
        import cv2
        try:
            cv2.imshow("detseg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
            return cv2.waitKey(1) & 0xFF not in (ord("q"), 27)
        except cv2.error:
            logger.warning("--show: no display available here; results are only written to disk")
            self.enabled = False
            return True


class Results:
    """COCO results, per-image label files and the image list, written atomically at the end."""

    def __init__(self, out_dir: str, predictor, save_txt: bool, panoptic_pngs: bool = True):
        self.out_dir, self.predictor, self.save_txt = out_dir, predictor, save_txt
        self.panoptic_pngs = panoptic_pngs
        self.records: list[dict] = []
        self.images: list[dict] = []
        self.panoptic: list[dict] = []  # COCO panoptic annotations, one per image

    def add(self, image_id: int, name: str, size: tuple[int, int], result: dict,
            stem: Optional[str] = None) -> None:
        from detseg.evaluation.coco import instances_to_results
        self.images.append({"id": image_id, "file_name": name, "height": size[0], "width": size[1]})
        if "classes" in result:
            self.add_classes(image_id, name, result["classes"], stem)
        if "panoptic" in result and self.panoptic_pngs:
            self.add_panoptic(image_id, result["panoptic"], stem or os.path.splitext(name)[0])
        inst = result.get("instances")
        if inst is None:
            return
        self.records.extend(instances_to_results(image_id, inst, self.predictor.cat_ids))
        if self.save_txt:
            os.makedirs(os.path.join(self.out_dir, "labels"), exist_ok=True)
            # "category_id score x1 y1 x2 y2 class name" (the name last: it may hold spaces)
            lines = [f"{self.predictor.cat_ids[int(k)]} {float(s):.4f} "
                     + " ".join(f"{v:.1f}" for v in b.tolist()) + f" {self.predictor.class_names[int(k)]}"
                     for b, s, k in zip(inst.boxes, inst.scores, inst.labels)]
            from detseg.utils import atomic_write
            path = os.path.join(self.out_dir, "labels", (stem or os.path.splitext(name)[0]) + ".txt")
            with atomic_write(path, "w") as f:
                f.write("\n".join(lines) + ("\n" if lines else ""))

    def add_classes(self, image_id: int, name: str, scores, stem: Optional[str]) -> None:
        """A classification result: its top 5 printed, in results.json (one record per class, as
        COCO's results list detections) and, with --save-txt, in labels/<stem>.txt."""
        from detseg.api import top_k
        top = top_k(scores, self.predictor.class_names, 5)
        print(f"{name}: " + ", ".join(f"{c} {p:.3f}" for c, p in top))
        index = {c: i for i, c in enumerate(self.predictor.class_names)}
        self.records.extend({"image_id": image_id, "category_id": self.predictor.cat_ids[index[c]],
                             "class": c, "score": round(p, 6), "rank": r} for r, (c, p) in enumerate(top, 1))
        if self.save_txt:  # "category_id score class name", best first
            lines = [f"{self.predictor.cat_ids[index[c]]} {p:.4f} {c}" for c, p in top]
            os.makedirs(os.path.join(self.out_dir, "labels"), exist_ok=True)
            from detseg.utils import atomic_write
            path = os.path.join(self.out_dir, "labels", (stem or os.path.splitext(name)[0]) + ".txt")
            with atomic_write(path, "w") as f:
                f.write("\n".join(lines) + "\n")

    def add_panoptic(self, image_id: int, panoptic: tuple, stem: str) -> None:
        """panoptic/<stem>.png (segment ids in COCO's RGB encoding) and the image's entry of
        panoptic.json (``segments_info``: id, category_id, isthing, score, area, bbox)."""
        import numpy as np

        from detseg.data.panoptic_format import id_to_rgb, mask_bbox
        ids, segments = panoptic
        ids = np.asarray(ids)
        file_name = stem + ".png"
        os.makedirs(os.path.join(self.out_dir, "panoptic"), exist_ok=True)
        _write_rgb(os.path.join(self.out_dir, "panoptic", file_name), id_to_rgb(ids))
        info = [{"id": int(seg["id"]), "category_id": int(seg["category_id"]),
                 "isthing": int(bool(seg["isthing"])), "score": round(float(seg["score"]), 6),
                 "area": int(seg["area"]), "bbox": mask_bbox(ids == seg["id"])} for seg in segments]
        self.panoptic.append({"image_id": image_id, "file_name": file_name, "segments_info": info})

    def close(self) -> None:
        from detseg.utils import write_json_atomic
        write_json_atomic(self.records, os.path.join(self.out_dir, "results.json"))
        write_json_atomic(self.images, os.path.join(self.out_dir, "images.json"))
        if self.panoptic:
            p = self.predictor
            categories = [{"id": int(c), "name": n, "isthing": 1} for c, n in zip(p.cat_ids, p.class_names)]
            categories += [{"id": int(c), "name": n, "isthing": 0}
                           for c, n in zip(p.stuff_cat_ids or [], p.stuff_names or [])]
            write_json_atomic({"images": self.images, "annotations": self.panoptic, "categories": categories},
                              os.path.join(self.out_dir, "panoptic.json"))


def _write_rgb(path: str, rgb) -> None:
    import cv2
    from detseg.utils import atomic_path
    with atomic_path(path) as tmp:
        if not cv2.imwrite(tmp, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
            raise OSError(f"could not write {path}")


def output_stems(paths: list[str]) -> dict[str, str]:
    """The output name (without extension) of each input image: its own stem, or, where two
    inputs share one (``a.png`` and ``a.jpg``, or the same name in two folders of a glob), the
    stem with its extension or a number added, so that no result replaces another."""
    taken: set[str] = set()
    out = {}
    for path in paths:
        stem, ext = os.path.splitext(os.path.basename(path))
        candidates = [stem, f"{stem}_{ext.lstrip('.')}"] + [f"{stem}_{i}" for i in range(2, len(paths) + 2)]
        name = next(c for c in candidates if c.lower() not in taken)
        taken.add(name.lower())
        out[path] = name
    return out


def run_images(paths: list[str], predictor, args, out_dir: str) -> int:
    """Images in batches; returns how many inputs failed."""
    from tqdm import tqdm

    from detseg.data.io import read_image
    from detseg.visualize import draw_prediction
    ids = {}
    if args.ann_file:
        from detseg.data.coco import load_coco
        coco = load_coco(args.ann_file)
        ids = {os.path.basename(im["file_name"]): im["id"] for im in coco.dataset["images"]}
    results, display, failed = Results(out_dir, predictor, args.save_txt), Display(args.show), 0
    stems = output_stems(paths)
    bar = tqdm(total=len(paths), unit="img", desc="infer",
               disable=os.environ.get("DETSEG_NO_PROGRESS") == "1")
    pending: list[tuple[int, str, object]] = []

    def flush() -> bool:
        preds = predictor.predict_batch([im for _, _, im in pending])
        for (image_id, path, image), pred in zip(pending, preds):
            name = os.path.basename(path)
            drawn = draw_prediction(image, pred, predictor.class_names)
            _write_rgb(os.path.join(out_dir, stems[path] + ".jpg"), drawn)
            results.add(image_id, name, image.shape[:2], pred, stems[path])
            if not display.show(drawn):
                return False
        bar.update(len(pending))
        pending.clear()
        return True

    for index, path in enumerate(paths, 1):
        try:
            image = read_image(path)
        except DataError as e:
            failed += 1
            logger.error("skipped: %s", e)
            bar.update(1)
            continue
        pending.append((ids.get(os.path.basename(path), index), path, image))
        if len(pending) >= args.batch_size and not flush():
            break
    if pending:
        flush()
    bar.close()
    results.close()
    if failed:
        logger.error("%d of %d inputs could not be read", failed, len(paths))
    return failed


def rss_mb() -> float:
    """Resident memory of this process in MiB (Linux /proc; 0 where unavailable)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        return 0.0


def run_video(source, predictor, args, out_dir: str) -> int:
    """A video file or camera, streamed: constant memory, decoding overlapped with inference."""
    from tqdm import tqdm

    from detseg.data.video import VideoReader, VideoWriter
    from detseg.visualize import draw_prediction
    reader = VideoReader(source, prefetch=2 * args.batch_size, max_frames=args.max_frames)
    stem = os.path.join(out_dir, "webcam" if isinstance(source, int) else
                        os.path.splitext(os.path.basename(source))[0])
    writer = VideoWriter(stem, reader.fps, (reader.width, reader.height))
    # a video's panoptic output is the drawn video (a PNG per frame would swamp the folder)
    results, display = Results(out_dir, predictor, False, panoptic_pngs=False), Display(args.show)
    bar = tqdm(total=reader.frame_count, unit="frame", desc="infer",
               disable=os.environ.get("DETSEG_NO_PROGRESS") == "1")
    memory, frames, pending, t0 = [], 0, [], time.perf_counter()

    def flush() -> bool:
        nonlocal frames
        for image, pred in zip(pending, predictor.predict_batch(pending)):
            frames += 1
            drawn = draw_prediction(image, pred, predictor.class_names)
            writer.write(drawn)
            results.add(frames, f"frame_{frames:06d}", image.shape[:2], pred)
            if frames % 25 == 0:
                memory.append({"frame": frames, "rss_mb": round(rss_mb(), 1)})
            if not display.show(drawn):
                return False
        bar.update(len(pending))
        pending.clear()
        return True

    try:
        with reader:
            for frame in reader:
                pending.append(frame)
                if len(pending) >= args.batch_size and not flush():
                    break
            if pending:
                flush()
    finally:
        bar.close()
    written = writer.close()
    results.close()
    wall = time.perf_counter() - t0
    stats = {"frames": frames, "written": written, "video": writer.path, "codec": writer.codec,
             "fps": frames / wall if wall > 0 else 0.0, "memory": memory}
    from detseg.utils import write_json_atomic
    write_json_atomic(stats, os.path.join(out_dir, "video_stats.json"))
    logger.info("%s: %d frames, %.1f fps, codec %s", writer.path, written, stats["fps"], writer.codec)
    return 0


def main(argv=None) -> int:
    args = parse_once(get_parser(), argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.batch_size < 1:
        print("error: --batch-size must be >= 1", file=sys.stderr)
        return 2
    from detseg.api import load_model
    from detseg.config import ConfigError
    from detseg.outputs import claim_dir
    from detseg.utils import UsageError, next_numbered_dir
    try:
        kind, what = classify_input(args.input)
        inputs = [args.weights, args.config, args.ann_file, args.input if os.path.exists(args.input) else None,
                  *(what if kind == "images" else [what] if kind == "video" else [])]
        output = claim_dir(args.output or next_numbered_dir(os.path.join("runs", "infer")), "infer",
                           inputs=inputs, overwrite=args.overwrite)
        out_dir = output.path
        weights = args.weights
        if choose_backend(args, kind, what) == "onnxruntime":
            from detseg.export.cache import cached_export
            weights, cached = cached_export(args.weights)
            logger.info("ONNX Runtime on %s (%s)", weights,
                        "cached export" if cached else "exported now, cached")
        predictor = load_model(weights, config=args.config, device=args.device,
                               score_threshold=args.score_threshold, half=args.half)
    except (DataError, CheckpointError, ConfigError, UsageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        if kind == "images":
            failed = run_images(what, predictor, args, out_dir)
        else:
            failed = run_video(what, predictor, args, out_dir)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        output.list_files(complete=True)
    print(json.dumps({"output": out_dir, "failed": failed}))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
