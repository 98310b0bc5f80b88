"""Dataset doctor: list every problem in a COCO-format dataset; optionally write a fixed copy.
A classification folder (one sub-folder of images per class) is checked as well: empty classes,
files that do not decode, files the loader skips, and the images per class. A COCO file's
instances per class and imbalance ratio come first (with a sampler to try when it is large). So is a COCO
panoptic file (read as one when its annotations carry segments_info): PNG ids missing from
segments_info and back, unknown category ids, stated areas against the PNG, PNG sizes against
the images, missing photos, and the segments per category.

    python tools/check_data.py ANN_JSON IMAGE_DIR [--fix clip|drop]
    python tools/check_data.py CLASS_FOLDER
    python tools/check_data.py panoptic_val.json IMAGE_DIR [--png-dir DIR]

Exit status 0 when the dataset is clean, 1 when problems were found (also when --fix wrote a
cleaned copy: the original still has them), 2 on bad usage.
"""
from __future__ import annotations

import argparse
import sys

from detseg.data.io import DataError
from detseg.data.validate import check_dataset, fix_dataset, format_table


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("ann_file", help="COCO annotation file, or a classification folder (root/<class>/*.jpg)")
    p.add_argument("image_dir", nargs="?", help="the images of the annotation file")
    p.add_argument("--fix", choices=["clip", "drop"],
                   help="write a cleaned copy beside the original (the original is not modified; "
                        "an existing copy only when an earlier --fix wrote it)")
    p.add_argument("--png-dir", help="a panoptic file's PNG folder (default: the JSON path without .json)")
    p.add_argument("--overwrite", action="store_true",
                   help="with --fix: replace an existing file at the copy's path that --fix did not write")
    return p


def main(argv=None) -> int:
    from detseg.utils import parse_once
    args = parse_once(get_parser(), argv)
    if args.image_dir is None:
        return check_class_folder(args.ann_file, args.fix)
    from detseg.data.panoptic_format import is_panoptic_file
    if is_panoptic_file(args.ann_file):
        return check_panoptic_file(args.ann_file, args.image_dir, args.png_dir, args.fix)
    problems = check_dataset(args.ann_file, args.image_dir)
    print_balance(args.ann_file)
    if not problems:
        print(f"{args.ann_file}: no problems found")
        return 0
    print(format_table(problems))
    print(f"\n{len(problems)} problem(s) in {args.ann_file}")
    if args.fix:
        from detseg.data.validate import fixed_path, written_by_fix
        from detseg.outputs import check_output_file
        from detseg.utils import UsageError
        try:
            check_output_file(fixed_path(args.ann_file, args.fix), inputs=[args.ann_file],
                              overwrite=args.overwrite, ours=written_by_fix, what="the fixed copy",
                              kind="fixed copy")
            out, counts = fix_dataset(args.ann_file, args.image_dir, args.fix)
        except UsageError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        except DataError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        print(f"wrote {out}: {counts['clipped']} clipped, {counts['dropped_annotations']} "
              f"annotation(s) and {counts['dropped_images']} image(s) dropped")
    return 1


def check_class_folder(root: str, fix) -> int:
    """The doctor on a folder per class: problems, then the class counts."""
    from detseg.data.classification import check_folder, format_counts
    if fix:
        print("error: --fix applies to COCO annotation files; a folder's problems are files to move",
              file=sys.stderr)
        return 2
    problems, counts = check_folder(root)
    if problems:
        print(format_table(problems))
        print()
    if counts:
        print(format_counts(counts))
    print(f"{len(problems)} problem(s) in {root}")
    return 1 if problems else 0


def print_balance(ann_file: str) -> None:
    """Instances per class and the imbalance ratio (nothing when the file does not read as JSON:
    the problems table says why)."""
    from detseg.data.class_balance import class_histogram, format_balance
    try:
        counts = class_histogram(ann_file)
    except (OSError, ValueError, AttributeError, TypeError):
        return
    print(format_balance(counts) + "\n")


def check_panoptic_file(path: str, image_dir: str, png_dir, fix) -> int:
    """The doctor on a COCO panoptic file: problems, then the segments per category."""
    from detseg.data.panoptic_format import check_panoptic
    if fix:
        print("error: --fix applies to instance annotation files; a panoptic file's problems are in "
              "its PNGs and segments_info", file=sys.stderr)
        return 2
    problems, counts = check_panoptic(path, image_dir, png_dir)
    if problems:
        print(format_table(problems))
        print()
    for name, n in sorted(counts.items()):
        print(f"{name}: {n} segment(s)")
    print(f"{len(problems)} problem(s) in {path}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
