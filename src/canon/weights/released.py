"""The released checkpoints of canon's torchvision- and timm-compatible models.

Each entry is transcribed from its publisher's own metadata, not measured here:

- torchvision: the ``Weights`` enums in ``torchvision/models/{alexnet,vgg,resnet,densenet,googlenet,
  mobilenetv2,vision_transformer}.py`` and ``torchvision/models/segmentation/{fcn,deeplabv3}.py``
  (URL, ``transforms=partial(ImageClassification | SemanticSegmentation, ...)``, ``num_params``,
  ``_metrics``, ``categories``); the preset's defaults (``resize_size=256``, bilinear, ImageNet
  mean and std) fill what an entry does not override.
- timm: ``default_cfgs`` in ``timm/models/deit.py`` (``url``, ``crop_pct=0.9``, bicubic,
  ``IMAGENET_DEFAULT_MEAN/STD``); the checkpoints are DeiT's own files
  (facebookresearch/deit ``models.py`` loads them with ``check_hash=True``), which hold
  ``{"model": state_dict}``.

Hashes: neither publisher lists full SHA-256 digests; both name files ``NAME-<hash>.pth`` where
``<hash>`` is the first 8+ hex digits of the file's SHA-256 (the ``torch.hub`` convention that
their loaders check with ``check_hash=True``). :attr:`ReleasedWeights.hash_prefix` reads it from
the file name; every entry here has one.

Not included: torchvision's SWAG end-to-end ViT weights (384/512 px inputs need a different
``image_size``), VGG-16's ``IMAGENET1K_FEATURES`` (no classifier), timm's ``*_384`` DeiT files
(no canon model of that size), and timm's Hugging Face Hub copies (no published hash).
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

__all__ = ["Preprocessing", "ReleasedWeights", "RELEASED", "IMAGENET_MEAN", "IMAGENET_STD", "VOC_CLASSES",
           "hash_prefix_of", "register_released_weights"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# torchvision/models/_meta.py, _VOC_CATEGORIES (the 20 Pascal VOC classes and the background).
VOC_CLASSES = ("__background__", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
               "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
               "train", "tvmonitor")

# torch.hub's convention: the file name ends "-<first 8 or more hex digits of the SHA-256>.<ext>".
_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.[A-Za-z0-9.]+$")


def hash_prefix_of(url_or_name: str) -> str | None:
    """The SHA-256 prefix in a torch.hub-style file name (``resnet50-11ad3fa6.pth`` -> ``"11ad3fa6"``)."""
    match = _HASH_IN_NAME.search(url_or_name.rsplit("/", 1)[-1].split("?", 1)[0])
    return match.group(1) if match else None


@dataclass(frozen=True)
class Preprocessing:
    """How an image is prepared for these weights (torchvision's evaluation presets).

    The image (RGB, values in [0, 1]) has its shorter side resized to ``resize`` with
    ``interpolation`` (antialiased), is cropped to ``crop`` × ``crop`` at the centre (``None``:
    no crop, as for segmentation), then normalised per channel: ``(x - mean) / std``.
    """

    resize: int
    crop: int | None
    interpolation: str = "bilinear"  # "bilinear" or "bicubic"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


@dataclass(frozen=True)
class ReleasedWeights:
    """One published checkpoint for one canon model."""

    model: str  # canon registry name
    source: str  # "torchvision" or "timm"
    tag: str  # torchvision's enum member ("IMAGENET1K_V2") or timm's pretrained tag ("fb_in1k")
    url: str
    preprocessing: Preprocessing
    categories: str  # "imagenet-1k" or "voc"
    num_classes: int
    origin: str  # where this entry was transcribed from
    default: bool = False  # the publisher's DEFAULT for this model
    num_params: int | None = None  # as published (torchvision's meta["num_params"])
    metrics: dict = field(default_factory=dict)  # as published
    sha256: str | None = None  # full digest, where published (none are)
    state_dict_key: str | None = None  # the file holds {state_dict_key: state_dict}
    # arguments the model must be built with for these weights (e.g. the frozen-BatchNorm eps
    # torchvision's detection weights need); create_model applies them unless the caller overrides
    model_kwargs: dict = field(default_factory=dict)
    notes: str = ""

    @property
    def hash_prefix(self) -> str | None:
        return hash_prefix_of(self.url)

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


_TV = "https://download.pytorch.org/models/"
_TV_CLS = "torchvision/models/{file}.py, {enum}.{tag}"


def _torchvision(model: str, file: str, enum: str, tag: str, filename: str, *, num_params: int, acc1: float,
                 acc5: float, resize: int = 256, crop: int = 224, interpolation: str = "bilinear",
                 default: bool = False, mean=IMAGENET_MEAN, std=IMAGENET_STD, notes: str = "") -> ReleasedWeights:
    return ReleasedWeights(
        model=model, source="torchvision", tag=tag, url=_TV + filename,
        preprocessing=Preprocessing(resize=resize, crop=crop, interpolation=interpolation, mean=mean, std=std),
        categories="imagenet-1k", num_classes=1000, origin=_TV_CLS.format(file=file, enum=enum, tag=tag),
        default=default, num_params=num_params, metrics={"ImageNet-1K acc@1": acc1, "ImageNet-1K acc@5": acc5},
        notes=notes)


def _torchvision_voc(model: str, file: str, enum: str, filename: str, *, num_params: int, miou: float,
                     pixel_acc: float) -> ReleasedWeights:
    return ReleasedWeights(
        model=model, source="torchvision", tag="COCO_WITH_VOC_LABELS_V1", url=_TV + filename,
        preprocessing=Preprocessing(resize=520, crop=None), categories="voc", num_classes=21,
        origin=f"torchvision/models/segmentation/{file}.py, {enum}.COCO_WITH_VOC_LABELS_V1", default=True,
        num_params=num_params, metrics={"COCO-val2017-VOC-labels miou": miou, "COCO-val2017-VOC-labels pixel_acc":
                                        pixel_acc},
        notes="trained on the COCO images of the 20 Pascal VOC classes; the file includes the auxiliary "
              "FCN head (aux_classifier), dropped when the model is built without aux_loss")


def _deit(model: str, filename: str) -> ReleasedWeights:
    return ReleasedWeights(
        model=model, source="timm", tag="fb_in1k", url="https://dl.fbaipublicfiles.com/deit/" + filename,
        # timm: crop_pct 0.9 -> resize floor(224 / 0.9) = 248, bicubic
        preprocessing=Preprocessing(resize=248, crop=224, interpolation="bicubic"),
        categories="imagenet-1k", num_classes=1000, default=True, state_dict_key="model",
        origin=f"timm/models/deit.py, default_cfgs['{model}.fb_in1k'] (url)")


_GOOGLENET_NOTE = ("torchvision builds this model with transform_input=True, which maps ImageNet-normalised "
                   "input to (x - 0.5) / 0.5; canon's googlenet has no transform_input, so the equivalent "
                   "mean = std = 0.5 is recorded here. The file includes the auxiliary heads (aux1, aux2).")

RELEASED: list[ReleasedWeights] = [
    _torchvision("alexnet", "alexnet", "AlexNet_Weights", "IMAGENET1K_V1", "alexnet-owt-7be5be79.pth",
                 num_params=61100840, acc1=56.522, acc5=79.066, default=True),
    # VGG
    _torchvision("vgg11", "vgg", "VGG11_Weights", "IMAGENET1K_V1", "vgg11-8a719046.pth",
                 num_params=132863336, acc1=69.020, acc5=88.628, default=True),
    _torchvision("vgg11_bn", "vgg", "VGG11_BN_Weights", "IMAGENET1K_V1", "vgg11_bn-6002323d.pth",
                 num_params=132868840, acc1=70.370, acc5=89.810, default=True),
    _torchvision("vgg13", "vgg", "VGG13_Weights", "IMAGENET1K_V1", "vgg13-19584684.pth",
                 num_params=133047848, acc1=69.928, acc5=89.246, default=True),
    _torchvision("vgg13_bn", "vgg", "VGG13_BN_Weights", "IMAGENET1K_V1", "vgg13_bn-abd245e5.pth",
                 num_params=133053736, acc1=71.586, acc5=90.374, default=True),
    _torchvision("vgg16", "vgg", "VGG16_Weights", "IMAGENET1K_V1", "vgg16-397923af.pth",
                 num_params=138357544, acc1=71.592, acc5=90.382, default=True),
    _torchvision("vgg16_bn", "vgg", "VGG16_BN_Weights", "IMAGENET1K_V1", "vgg16_bn-6c64b313.pth",
                 num_params=138365992, acc1=73.360, acc5=91.516, default=True),
    _torchvision("vgg19", "vgg", "VGG19_Weights", "IMAGENET1K_V1", "vgg19-dcbb9e9d.pth",
                 num_params=143667240, acc1=72.376, acc5=90.876, default=True),
    _torchvision("vgg19_bn", "vgg", "VGG19_BN_Weights", "IMAGENET1K_V1", "vgg19_bn-c79401a0.pth",
                 num_params=143678248, acc1=74.218, acc5=91.842, default=True),
    # ResNet, ResNeXt, Wide ResNet
    _torchvision("resnet18", "resnet", "ResNet18_Weights", "IMAGENET1K_V1", "resnet18-f37072fd.pth",
                 num_params=11689512, acc1=69.758, acc5=89.078, default=True),
    _torchvision("resnet34", "resnet", "ResNet34_Weights", "IMAGENET1K_V1", "resnet34-b627a593.pth",
                 num_params=21797672, acc1=73.314, acc5=91.420, default=True),
    _torchvision("resnet50", "resnet", "ResNet50_Weights", "IMAGENET1K_V1", "resnet50-0676ba61.pth",
                 num_params=25557032, acc1=76.130, acc5=92.862),
    _torchvision("resnet50", "resnet", "ResNet50_Weights", "IMAGENET1K_V2", "resnet50-11ad3fa6.pth",
                 num_params=25557032, acc1=80.858, acc5=95.434, resize=232, default=True),
    _torchvision("resnet101", "resnet", "ResNet101_Weights", "IMAGENET1K_V1", "resnet101-63fe2227.pth",
                 num_params=44549160, acc1=77.374, acc5=93.546),
    _torchvision("resnet101", "resnet", "ResNet101_Weights", "IMAGENET1K_V2", "resnet101-cd907fc2.pth",
                 num_params=44549160, acc1=81.886, acc5=95.780, resize=232, default=True),
    _torchvision("resnet152", "resnet", "ResNet152_Weights", "IMAGENET1K_V1", "resnet152-394f9c45.pth",
                 num_params=60192808, acc1=78.312, acc5=94.046),
    _torchvision("resnet152", "resnet", "ResNet152_Weights", "IMAGENET1K_V2", "resnet152-f82ba261.pth",
                 num_params=60192808, acc1=82.284, acc5=96.002, resize=232, default=True),
    _torchvision("resnext50_32x4d", "resnet", "ResNeXt50_32X4D_Weights", "IMAGENET1K_V1",
                 "resnext50_32x4d-7cdf4587.pth", num_params=25028904, acc1=77.618, acc5=93.698),
    _torchvision("resnext50_32x4d", "resnet", "ResNeXt50_32X4D_Weights", "IMAGENET1K_V2",
                 "resnext50_32x4d-1a0047aa.pth", num_params=25028904, acc1=81.198, acc5=95.340, resize=232,
                 default=True),
    _torchvision("wide_resnet50_2", "resnet", "Wide_ResNet50_2_Weights", "IMAGENET1K_V1",
                 "wide_resnet50_2-95faca4d.pth", num_params=68883240, acc1=78.468, acc5=94.086),
    _torchvision("wide_resnet50_2", "resnet", "Wide_ResNet50_2_Weights", "IMAGENET1K_V2",
                 "wide_resnet50_2-9ba9bcbe.pth", num_params=68883240, acc1=81.602, acc5=95.758, resize=232,
                 default=True),
    # DenseNet (ported from LuaTorch; legacy "norm.1" key names, remapped on load)
    _torchvision("densenet121", "densenet", "DenseNet121_Weights", "IMAGENET1K_V1", "densenet121-a639ec97.pth",
                 num_params=7978856, acc1=74.434, acc5=91.972, default=True),
    _torchvision("densenet161", "densenet", "DenseNet161_Weights", "IMAGENET1K_V1", "densenet161-8d451a50.pth",
                 num_params=28681000, acc1=77.138, acc5=93.560, default=True),
    _torchvision("densenet169", "densenet", "DenseNet169_Weights", "IMAGENET1K_V1", "densenet169-b2777c0a.pth",
                 num_params=14149480, acc1=75.600, acc5=92.806, default=True),
    _torchvision("densenet201", "densenet", "DenseNet201_Weights", "IMAGENET1K_V1", "densenet201-c1103571.pth",
                 num_params=20013928, acc1=76.896, acc5=93.370, default=True),
    # GoogLeNet (num_params as published: without the auxiliary heads)
    _torchvision("googlenet", "googlenet", "GoogLeNet_Weights", "IMAGENET1K_V1", "googlenet-1378be20.pth",
                 num_params=6624904, acc1=69.778, acc5=89.530, default=True, mean=(0.5, 0.5, 0.5),
                 std=(0.5, 0.5, 0.5), notes=_GOOGLENET_NOTE),
    # MobileNetV2
    _torchvision("mobilenet_v2", "mobilenetv2", "MobileNet_V2_Weights", "IMAGENET1K_V1",
                 "mobilenet_v2-b0353104.pth", num_params=3504872, acc1=71.878, acc5=90.286),
    _torchvision("mobilenet_v2", "mobilenetv2", "MobileNet_V2_Weights", "IMAGENET1K_V2",
                 "mobilenet_v2-7ebf99e0.pth", num_params=3504872, acc1=72.154, acc5=90.822, resize=232,
                 default=True),
    # Vision Transformer (legacy "mlp.linear_1" key names, remapped on load)
    _torchvision("vit_b_16", "vision_transformer", "ViT_B_16_Weights", "IMAGENET1K_V1", "vit_b_16-c867db91.pth",
                 num_params=86567656, acc1=81.072, acc5=95.318, default=True),
    _torchvision("vit_b_16", "vision_transformer", "ViT_B_16_Weights", "IMAGENET1K_SWAG_LINEAR_V1",
                 "vit_b_16_lc_swag-4e70ced5.pth", num_params=86567656, acc1=81.886, acc5=96.180, resize=224,
                 interpolation="bicubic"),
    _torchvision("vit_b_32", "vision_transformer", "ViT_B_32_Weights", "IMAGENET1K_V1", "vit_b_32-d86f8d99.pth",
                 num_params=88224232, acc1=75.912, acc5=92.466, default=True),
    _torchvision("vit_l_16", "vision_transformer", "ViT_L_16_Weights", "IMAGENET1K_V1", "vit_l_16-852ce7e3.pth",
                 num_params=304326632, acc1=79.662, acc5=94.638, resize=242, default=True),
    _torchvision("vit_l_16", "vision_transformer", "ViT_L_16_Weights", "IMAGENET1K_SWAG_LINEAR_V1",
                 "vit_l_16_lc_swag-4d563306.pth", num_params=304326632, acc1=85.146, acc5=97.422, resize=224,
                 interpolation="bicubic"),
    # Segmentation (num_params as published: with the auxiliary head)
    _torchvision_voc("fcn_resnet50", "fcn", "FCN_ResNet50_Weights", "fcn_resnet50_coco-1167a1af.pth",
                     num_params=35322218, miou=60.5, pixel_acc=91.4),
    _torchvision_voc("fcn_resnet101", "fcn", "FCN_ResNet101_Weights", "fcn_resnet101_coco-7ecb50ca.pth",
                     num_params=54314346, miou=63.7, pixel_acc=91.9),
    _torchvision_voc("deeplabv3_resnet50", "deeplabv3", "DeepLabV3_ResNet50_Weights",
                     "deeplabv3_resnet50_coco-cd0a2569.pth", num_params=42004074, miou=66.4, pixel_acc=92.4),
    _torchvision_voc("deeplabv3_resnet101", "deeplabv3", "DeepLabV3_ResNet101_Weights",
                     "deeplabv3_resnet101_coco-586e9e4e.pth", num_params=60996202, miou=67.4, pixel_acc=92.4),
    # DeiT (timm)
    _deit("deit_tiny_patch16_224", "deit_tiny_patch16_224-a1311bcf.pth"),
    _deit("deit_small_patch16_224", "deit_small_patch16_224-cd65a155.pth"),
    _deit("deit_base_patch16_224", "deit_base_patch16_224-b5f2ef4d.pth"),
    _deit("deit_tiny_distilled_patch16_224", "deit_tiny_distilled_patch16_224-b40b3cf7.pth"),
    _deit("deit_small_distilled_patch16_224", "deit_small_distilled_patch16_224-649709d9.pth"),
    _deit("deit_base_distilled_patch16_224", "deit_base_distilled_patch16_224-df68dfff.pth"),
]


def register_released_weights(*entries: ReleasedWeights) -> None:
    """Add entries to :data:`RELEASED` (model families outside this file, e.g. the detectors, call it).

    Each entry must name its hash (``sha256`` or a hash prefix in the file name); a
    ``(model, source, tag)`` may appear once, and each ``(model, source)`` has one default.
    """
    for entry in entries:
        if not isinstance(entry, ReleasedWeights):
            raise TypeError(f"expected ReleasedWeights, got {type(entry).__name__}")
        if entry.sha256 is None and entry.hash_prefix is None:
            raise ValueError(f"{entry.model} ({entry.source}:{entry.tag}): {entry.url} has no hash in its name; "
                             f"give sha256=")
        same = [w for w in RELEASED if (w.model, w.source) == (entry.model, entry.source)]
        if any(w.tag == entry.tag for w in same):
            raise ValueError(f"{entry.model}: {entry.source}:{entry.tag} is registered twice")
        if entry.default and any(w.default for w in same):
            raise ValueError(f"{entry.model}: a second default {entry.source} checkpoint ({entry.tag})")
        RELEASED.append(entry)
