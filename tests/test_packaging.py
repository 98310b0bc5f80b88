"""The install gives what later stages need: cv2.ximgproc (selective search) among them."""
import os
import re

from tests.conftest import ROOT


def test_opencv_contrib_available():
    import cv2
    assert hasattr(cv2, "ximgproc"), "opencv-contrib-python-headless is not active"
    ss = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
    assert ss is not None


def test_ci_runs_exactly_the_readme_test_command():
    readme = open(os.path.join(ROOT, "README.md")).read()
    ci = open(os.path.join(ROOT, ".ci", "run")).read()
    blocks = re.findall(r"```bash\n(.*?)```", readme, re.S)
    test_cmds = [line for b in blocks for line in b.splitlines() if "pytest" in line]
    assert len(test_cmds) == 1
    assert test_cmds[0].strip() in ci.splitlines()
