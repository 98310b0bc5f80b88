"""``Explainer``: a model (from a config, random weights, or a checkpoint) and the views of
``detseg.explain`` on an image, as data and as pictures. For notebooks::

    from detseg.explain import Explainer
    ex = Explainer.from_checkpoint("runs/faster_rcnn/best.pth")
    print(ex.layers("photo.jpg").text())
    ex.write("saliency", "photo.jpg", "explain_out/")   # -> ["explain_out/saliency.png"]
"""
from __future__ import annotations

import os
from typing import Optional, Sequence

import numpy as np
import torch

from ..api import Predictor, load_model
from ..data.prepare import ImageLike, prepare_image
from ..data.transforms import collate
from ..modeling.heads.base import CLASSES, SEMANTIC
from . import panels
from .features import capture, feature_grid, filter_grid, first_conv
from .layers import LayerTable, format_layer_table, layer_table
from .pooling import draw_region_geometry, feature_for, region_geometry
from .proposals import recall_at, rpn_of, rpn_proposals, search_proposals
from .saliency import grad_cam, overlay
from .upsampling import upsampling_stages
from .windows import window_score_maps

VIEWS = ("layers", "features", "saliency", "windows", "proposals", "pooling", "upsampling")


class Explainer:
    """The views on one model. ``predictor``: a ``detseg.api.Predictor`` (``fold_bn=False`` keeps
    the layers as trained)."""

    def __init__(self, predictor: Predictor):
        self.predictor = predictor
        self.model = predictor.model.float().eval()
        self.class_names = predictor.class_names
        self.transform = predictor.transform
        if self.transform is None:  # the model resizes itself: resize in the pipeline instead, so
            from ..data.transforms import eval_transform  # every view sees the pixels the network reads
            self.transform = eval_transform(predictor.cfg.data.min_size_test, predictor.cfg.data.max_size)
            self.model.resize = None

    @classmethod
    def from_checkpoint(cls, weights: str, config: Optional[str] = None, device: str = "cpu") -> "Explainer":
        from ..export.format import is_exported
        from ..utils import UsageError
        if is_exported(weights):
            raise UsageError(f"{weights}: an exported graph has no layers to look into; explain the "
                             f"checkpoint (.pth) it was exported from")
        return cls(load_model(weights, config=config, device=device, fold_bn=False, channels_last=False))

    @classmethod
    def from_config(cls, config: Optional[str], overrides: Sequence[str] = (), device: str = "cpu",
                    class_names: Optional[Sequence[str]] = None) -> "Explainer":
        """A model of the config with its initial weights (what a learner inspects before
        training); the classes are the config's training split's unless given."""
        from ..config import load_config
        from ..modeling.model import build_model
        cfg = load_config(config, list(overrides))
        stuff = None
        if class_names is None:
            from ..data.build import build_classification_dataset, panoptic_source, resolve_splits
            from ..data.coco import CocoDataset
            from ..modeling.model import data_needs
            split = resolve_splits(cfg)["train"]
            if data_needs(cfg).classify:  # a folder per class
                class_names = build_classification_dataset(cfg, split, train=True).class_names
            else:  # the annotations only: no proposal caches, no images read
                ds = CocoDataset(split["ann_file"], split["image_dir"], panoptic=panoptic_source(cfg, split))
                class_names, stuff = ds.class_names, (ds.stuff_names if ds.num_stuff else None)
        model = build_model(cfg, len(class_names), len(stuff) if stuff else None)
        return cls(Predictor(model, cfg, class_names, list(range(1, len(class_names) + 1)), device=device,
                             channels_last=False, fold_bn=False, stuff_names=stuff))

    # -- inputs ---------------------------------------------------------------------------------
    def batch(self, image: ImageLike):
        """The one-image ``Batch`` the network reads (resized as at test time), on the model's device."""
        b = collate([prepare_image(image, self.transform, 0)])
        return b.replace(images=b.images.to(self.model.device))

    def val_images(self, n: int) -> list[str]:
        """Paths of the first ``n`` images of the model's val split: a detection split's first
        images, or one image of each of the first ``n`` classes of a folder-per-class split."""
        import json

        from ..data.build import resolve_splits
        split = resolve_splits(self.predictor.cfg)["val"]
        if split.get("ann_file"):
            with open(split["ann_file"], encoding="utf-8") as f:
                files = [im["file_name"] for im in json.load(f)["images"]]
            return [os.path.join(split["image_dir"], name) for name in files[:n]]
        root = split["image_dir"]
        classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
        return [os.path.join(root, c, sorted(os.listdir(os.path.join(root, c)))[0]) for c in classes[:n]]

    @staticmethod
    def input_image(batch) -> np.ndarray:
        """The network input's pixels (resized, unpadded) as RGB uint8."""
        h, w = batch.image_sizes[0]
        return batch.images[0, :, :h, :w].permute(1, 2, 0).cpu().numpy().copy()

    # -- views as data --------------------------------------------------------------------------
    def layers(self, image: ImageLike, max_depth: Optional[int] = None) -> LayerTable:
        return layer_table(self.model, self.batch(image), max_depth=max_depth)

    def feature_maps(self, image: ImageLike, layer: str) -> torch.Tensor:
        """``[C, h, w]`` output of module ``layer`` on the image."""
        batch = self.batch(image)
        with torch.no_grad():
            got = capture(self.model, lambda: self.model(batch), [layer])[layer]
        if got.dim() != 4:
            raise ValueError(f"layer {layer!r} gives a {got.dim()}-D tensor {tuple(got.shape)}, not a feature map")
        return got[0]

    def default_feature_layer(self) -> str:
        """The first stage after the stem (stride 4 on a ResNet): maps still big enough to see
        edges and colours in; ``features(layer=...)`` names any other."""
        backbone = self.model.backbone
        body = getattr(backbone, "body", backbone)
        if not hasattr(body, "stage_names"):
            from .saliency import default_layer
            return default_layer(self.model)
        prefix = "backbone.body" if body is not backbone else "backbone"
        return f"{prefix}.stages.{body.stage_names[min(1, len(body.stage_names) - 1)]}"

    # -- pictures -------------------------------------------------------------------------------
    def pictures(self, view: str, image: ImageLike, **options) -> dict[str, np.ndarray]:
        """``{file stem: RGB uint8 picture}`` of ``view`` (one of ``VIEWS`` but ``layers``)."""
        if view not in VIEWS or view == "layers":
            raise ValueError(f"view must be one of {', '.join(v for v in VIEWS if v != 'layers')}, got {view!r}")
        return getattr(self, f"_draw_{view}")(image, **options)

    def write(self, view: str, image: ImageLike, out_dir: str, **options) -> list[str]:
        """Write ``view``'s pictures (PNG) or table (``layers.txt`` + ``layers.json``) into
        ``out_dir``; the paths written."""
        from ..utils import atomic_write, write_json_atomic
        os.makedirs(out_dir, exist_ok=True)
        if view == "layers":
            table = self.layers(image, options.get("max_depth"))
            txt, js = os.path.join(out_dir, "layers.txt"), os.path.join(out_dir, "layers.json")
            with atomic_write(txt, "w") as f:
                f.write(format_layer_table(table) + "\n")
            write_json_atomic(table.as_dict(), js, indent=1)
            return [txt, js]
        written = []
        for stem, rgb in self.pictures(view, image, **options).items():
            path = os.path.join(out_dir, f"{stem}.png")
            panels.write_rgb(path, rgb)
            written.append(path)
        return written

    def _draw_features(self, image, layer: Optional[str] = None, max_channels: int = 64):
        layer = layer or self.default_feature_layer()
        fmap = self.feature_maps(image, layer)
        grid, channels = feature_grid(fmap, max_channels)
        name, conv = first_conv(self.model)
        shown = len(channels)
        return {"features": panels.titled(grid, f"{layer}: {shown} of {fmap.shape[0]} channels, "
                                                f"{fmap.shape[1]}x{fmap.shape[2]}, strongest first"),
                "filters": panels.titled(filter_grid(conv), f"{name}: {conv.out_channels} filters "
                                                            f"{conv.kernel_size[0]}x{conv.kernel_size[1]}")}

    def _draw_saliency(self, image, target=None, head: Optional[str] = None, layer: Optional[str] = None,
                       method: Optional[str] = None, score: str = "logit"):
        batch = self.batch(image)
        s = grad_cam(self.model, batch, self.class_names, head=head, target=target, layer=layer, method=method,
                     score=score)
        shown = panels.enlarge(self.input_image(batch), 240, nearest=False)
        heat = overlay(shown, s.heat)
        t = s.target
        if "box" in t:
            import cv2
            f = shown.shape[0] / s.heat.shape[0]
            x0, y0, x1, y1 = (int(round(v * f)) for v in t["box"])
            for img in (shown, heat):
                cv2.rectangle(img, (x0, y0), (x1, y1), (255, 255, 255), 2)
        what = t["class"] + (f" {t['score']:.2f}" if "score" in t else "")
        where = s.layer if s.layer else "input pixels"
        return {"saliency": panels.row([panels.titled(shown, f"{t['head']}: {what}"),
                                        panels.titled(heat, f"{s.method} at {where}")])}

    def _draw_windows(self, image, head: Optional[str] = None, cell: int = 8):
        batch = self.batch(image)
        maps, n = window_score_maps(self.model, batch, head, cell)
        picture = self.input_image(batch)
        shown = panels.enlarge(picture, 160, nearest=False)
        size = (shown.shape[1], shown.shape[0])
        import cv2
        tiles = [panels.titled(shown, f"{n} windows scored")]
        for c, name in enumerate(self.class_names):
            h, w = batch.image_sizes[0]
            full = np.kron(maps[c].numpy(), np.ones((cell, cell), np.float32))[:h, :w]
            tiles.append(panels.titled(overlay(shown, cv2.resize(full, size), 0.6), f"{name} (max {float(maps[c].max()):.2f})"))
        with torch.no_grad():
            out = self.model(batch)
        from ..visualize import draw_instances
        name = next(n for n, h in self.model.heads.items() if h.output not in (SEMANTIC, CLASSES))
        inst = out[name][0].to("cpu")
        inst = inst[inst.scores >= 0.3]
        f = shown.shape[0] / picture.shape[0]
        tiles.append(panels.titled(draw_instances(shown, inst.scale(f, f, shown.shape[:2]), self.class_names),
                                   "detections (score >= 0.3)"))
        rows = [panels.row(tiles[i:i + 4]) for i in range(0, len(tiles), 4)]
        return {"windows": panels.column(rows)}

    def _draw_proposals(self, image, gt_boxes: Optional[torch.Tensor] = None, mode: str = "fast",
                        shown: int = 50):
        """``gt_boxes``: ``[G, 4]`` in the image file's pixels, for the recall."""
        import cv2
        batch = self.batch(image)
        picture = self.input_image(batch)
        (h, w), (oh, ow) = batch.image_sizes[0], batch.orig_sizes[0]
        gt = None
        if gt_boxes is not None:
            gt = torch.as_tensor(gt_boxes, dtype=torch.float32).reshape(-1, 4) * torch.tensor([w / ow, h / oh] * 2)
        sources = [("selective search (" + mode + ")", search_proposals(picture, mode))]
        if rpn_of(self.model) is not None:
            sources.append(("RPN", rpn_proposals(self.model, batch)))
        tiles = []
        for title, boxes in sources:
            img = panels.enlarge(picture, 240, nearest=False)
            f = img.shape[0] / picture.shape[0]
            for b in boxes[:shown].tolist():
                cv2.rectangle(img, (int(b[0] * f), int(b[1] * f)), (int(b[2] * f), int(b[3] * f)), (255, 200, 0), 1)
            if gt is not None:
                for b in gt.tolist():
                    cv2.rectangle(img, (int(b[0] * f), int(b[1] * f)), (int(b[2] * f), int(b[3] * f)), (0, 255, 0), 2)
                r = recall_at(boxes, gt)
                title += ", recall@IoU.5 " + " ".join(f"{n}:{v:.2f}" for n, v in r.items())
            tiles.append(panels.titled(img, f"{title}: {len(boxes)} boxes, first {min(shown, len(boxes))} drawn"))
        return {"proposals": panels.row(tiles)}

    def _draw_pooling(self, image, box: Optional[Sequence[float]] = None, feature: Optional[str] = None):
        """``box``: (x1, y1, x2, y2) in the image file's pixels (default: the top detection's box,
        else the middle half of the image)."""
        batch = self.batch(image)
        (h, w), (oh, ow) = batch.image_sizes[0], batch.orig_sizes[0]
        shapes = self.model.backbone.output_shape()
        if box is not None:
            box = [box[0] * w / ow, box[1] * h / oh, box[2] * w / ow, box[3] * h / oh]
        else:
            box = self._top_box(batch) or [w / 4, h / 4, 3 * w / 4, 3 * h / 4]
        feature = feature or feature_for(box, {n: s.stride for n, s in shapes.items()})
        if feature not in shapes:
            raise ValueError(f"no feature map {feature!r}; the backbone gives {', '.join(shapes)}")
        with torch.no_grad():
            fmap = self.model.backbone(self.model.preprocess(batch.images))[feature][0]
        stride = shapes[feature].stride
        g = region_geometry(box, stride, fmap.shape[-2], fmap.shape[-1])
        drawn = draw_region_geometry(g, fmap.float().mean(0).cpu().numpy())
        return {"pooling": panels.row([panels.titled(img, f"{feature} (stride {stride}): {t}") for t, img in drawn])}

    def _top_box(self, batch) -> Optional[list[float]]:
        with torch.no_grad():
            out = self.model(batch)
        for name, head in self.model.heads.items():
            if head.output not in (SEMANTIC, CLASSES) and len(out[name][0]):
                inst = out[name][0]
                return [float(v) for v in inst.boxes[int(inst.scores.argmax())]]
        return None

    def _draw_upsampling(self, image, head: Optional[str] = None):
        from ..visualize import draw_semantic
        batch = self.batch(image)
        stages, kernels = upsampling_stages(self.model, batch, head)
        picture = panels.enlarge(self.input_image(batch), 160, nearest=False)
        import cv2
        size = (picture.shape[1], picture.shape[0])
        tiles = [panels.titled(picture, "input")]
        for s in stages:
            labels = cv2.resize(s.labels, size, interpolation=cv2.INTER_NEAREST)
            tiles.append(panels.titled(draw_semantic(picture, labels, self.class_names),
                                       f"FCN-{s.stride}s ({s.scores[0]}x{s.scores[1]} scores)"))
        rows = [panels.row(tiles)]
        ktiles = []
        for k in kernels:
            lo, hi = min(k.learned.min(), k.bilinear.min()), max(k.learned.max(), k.bilinear.max())
            cell = max(8, 150 // k.learned.shape[0])  # wide enough for the title
            block = np.ones((cell, cell), np.float32)
            ktiles.append(panels.titled(panels.heat_image(np.kron(k.learned, block), lo, hi),
                                        f"x{k.factor} learned ({k.change:.0%} moved)"))
            ktiles.append(panels.titled(panels.heat_image(np.kron(k.bilinear, block), lo, hi),
                                        f"x{k.factor} bilinear start"))
        if ktiles:
            rows.append(panels.row(ktiles))
        return {"upsampling": panels.column(rows)}
