"""Imports timm on the CPU-only torch wheel (tests and benchmarks only).

The torchvision wheel that matches torch 2.13.0 is a CUDA build whose import fails with
"operator torchvision::nms does not exist"; defining the two missing operator schemas first
makes it importable. Nothing here uses those operators.
"""

_library = []


def import_timm():
    import torch

    if not _library:
        library = torch.library.Library("torchvision", "DEF")
        try:
            library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
            library.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        except RuntimeError:  # a working torchvision build defines them already
            pass
        _library.append(library)
    import timm

    return timm
