"""YOLO v1 / v2 / v3 against the papers' formulas, the darknet layer lists, and real boxes.

References (independent of canon's code):
    - the layer lists of the papers (v1 Figure 3, Darknet-19 Table 6, Darknet-53 Table 1) and of
      darknet's yolov3.cfg / yolov3-tiny.cfg, written out below as convolution lists, from which
      the parameter counts are computed by hand (k²·c_in·c_out, plus 2·c_out for batch norm or
      c_out for a bias); yolov3 at 80 classes is also the 61,949,149 that the ultralytics/yolov3
      repository prints for yolov3.cfg;
    - the v1 loss of §2.2, transcribed with explicit loops over images, cells and predictors and
      a scalar IoU;
    - the v2/v3 box equations b_x = σ(t_x) + c_x, b_w = p_w e^{t_w}, transcribed per element;
    - the v3 loss rules (best prior by shape IoU, BCE objectness with the 0.5 ignore rule, BCE
      classes, (2 − w·h)-weighted squared box error), transcribed with loops;
    - real boxes from the raccoon annotations (Pascal VOC XML, parsed here with xml.etree).
"""
from __future__ import annotations

import math
import xml.etree.ElementTree as ET

import pytest
import torch
import torch.nn as nn

import canon
from canon.models.detection.yolo import (COCO_ANCHORS_V3, COCO_ANCHORS_V3_TINY, VOC_PRIORS_V2, YOLOv2, assign_anchors,
                                         decode_anchor_boxes, decode_yolov1_boxes, yolov1_loss, yolov1_targets,
                                         yolov2_loss, yolov3_loss)

torch.set_num_threads(1)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def conv_params(convs, batch_norm=True):
    """Sum over (c_in, c_out, k) of k²·c_in·c_out + (2·c_out with batch norm, else c_out for the bias)."""
    return sum(k * k * cin * cout + (2 * cout if batch_norm else cout) for cin, cout, k in convs)


def chain(c_in, layers):
    """(c_in, c_out, k) triples for a plain chain of (c_out, k) convolutions."""
    out = []
    for c_out, k in layers:
        out.append((c_in, c_out, k))
        c_in = c_out
    return out


# Figure 3 of the YOLO paper: 24 convolutions (max-pools carry no parameters).
V1_CONVS = chain(3, [(64, 7), (192, 3), (128, 1), (256, 3), (256, 1), (512, 3)] + [(256, 1), (512, 3)] * 4
                 + [(512, 1), (1024, 3)] + [(512, 1), (1024, 3)] * 2 + [(1024, 3)] * 4)
# Table 6 of YOLO9000 without the 1000-way classifier: 18 convolutions.
DARKNET19_CONVS = chain(3, [(32, 3), (64, 3), (128, 3), (64, 1), (128, 3), (256, 3), (128, 1), (256, 3),
                            (512, 3), (256, 1), (512, 3), (256, 1), (512, 3),
                            (1024, 3), (512, 1), (1024, 3), (512, 1), (1024, 3)])


def darknet53_convs():
    """Table 1 of YOLOv3: 52 convolutions."""
    convs, c = [(3, 32, 3)], 32
    for c_out, blocks in ((64, 1), (128, 2), (256, 8), (512, 8), (1024, 4)):
        convs.append((c, c_out, 3))
        convs += [(c_out, c_out // 2, 1), (c_out // 2, c_out, 3)] * blocks
        c = c_out
    return convs


def yolov3_cfg_params(num_classes):
    """darknet's yolov3.cfg: Darknet-53, three 'conv set + 3×3 + linear 1×1' heads, two 1×1 laterals."""
    out = 3 * (5 + num_classes)
    bn = darknet53_convs()
    linear = []
    for c_in, width in ((1024, 512), (512 + 256, 256), (256 + 128, 128)):
        bn += chain(c_in, [(width, 1), (2 * width, 3), (width, 1), (2 * width, 3), (width, 1), (2 * width, 3)])
        linear.append((2 * width, out, 1))
    bn += [(512, 256, 1), (256, 128, 1)]
    return conv_params(bn) + conv_params(linear, batch_norm=False)


def yolov3_tiny_cfg_params(num_classes):
    out = 3 * (5 + num_classes)
    bn = chain(3, [(16, 3), (32, 3), (64, 3), (128, 3), (256, 3), (512, 3), (1024, 3), (256, 1), (512, 3)])
    bn += [(256, 128, 1), (128 + 256, 256, 3)]
    return conv_params(bn) + conv_params([(512, out, 1), (256, out, 1)], batch_norm=False)


def yolov2_params(num_classes):
    """Darknet-19 + three 3×3×1024 (the last after the 2048-channel passthrough) + a linear 1×1."""
    bn = DARKNET19_CONVS + [(1024, 1024, 3), (1024, 1024, 3), (1024 + 2048, 1024, 3)]
    return conv_params(bn) + conv_params([(1024, 5 * (5 + num_classes), 1)], batch_norm=False)


def yolov1_params(grid=7, boxes=2, classes=20, image_size=448):
    """``classes`` is the paper's C (object classes; num_classes = C + 1 counts the background)."""
    fc_in = (image_size // 64) ** 2 * 1024
    return conv_params(V1_CONVS, batch_norm=False) + fc_in * 4096 + 4096 + 4096 * grid * grid * (5 * boxes + classes) \
        + grid * grid * (5 * boxes + classes)


@pytest.mark.parametrize("name, kwargs, expected", [
    ("yolov1", {}, yolov1_params()),
    ("yolov1", {"grid_size": 5, "boxes_per_cell": 3, "num_classes": 5, "image_size": 320},
     yolov1_params(5, 3, 4, 320)),
    ("yolov2", {}, yolov2_params(20)),
    ("yolov2", {"num_classes": 81}, yolov2_params(80)),
    ("yolov3", {}, yolov3_cfg_params(80)),
    ("yolov3", {"num_classes": 21}, yolov3_cfg_params(20)),
    ("yolov3_tiny", {}, yolov3_tiny_cfg_params(80)),
])
def test_parameter_counts_from_the_papers_layer_lists(name, kwargs, expected):
    with torch.device("meta"):
        model = canon.create_model(name, **kwargs)
    assert count_params(model) == expected


def test_yolov3_parameter_count_is_the_published_figure():
    with torch.device("meta"):
        model = canon.create_model("yolov3")
    assert count_params(model) == 61_949_149 == yolov3_cfg_params(80)


@pytest.mark.parametrize("name, convs", [("yolov1", 24), ("yolov1_fast", 9), ("yolov2", 22), ("yolov3", 75),
                                         ("yolov3_tiny", 13)])
def test_number_of_convolutions(name, convs):
    # v1: 24 (Fast YOLO 9); v2: Darknet-19's 18 + 3 + output; v3: darknet's yolov3.cfg has 75, tiny 13
    with torch.device("meta"):
        model = canon.create_model(name)
    assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) == convs


def test_leaky_relu_slope_and_v1_fully_connected_head():
    with torch.device("meta"):
        model = canon.create_model("yolov1")
    slopes = {m.negative_slope for m in model.modules() if isinstance(m, nn.LeakyReLU)}
    assert slopes == {0.1}
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(7 * 7 * 1024, 4096), (4096, 7 * 7 * 30)]
    assert any(isinstance(m, nn.Dropout) and m.p == 0.5 for m in model.modules())


@pytest.mark.parametrize("name, size, shapes", [
    ("yolov1", 448, [(1, 7, 7, 30)]),
    ("yolov2", 416, [(1, 13, 13, 5, 25)]),
    ("yolov2", 608, [(1, 19, 19, 5, 25)]),
    ("yolov3", 416, [(1, 52, 52, 3, 85), (1, 26, 26, 3, 85), (1, 13, 13, 3, 85)]),
    ("yolov3_tiny", 416, [(1, 26, 26, 3, 85), (1, 13, 13, 3, 85)]),
])
def test_output_grids_at_the_paper_sizes(name, size, shapes):
    with torch.device("meta"):
        model = canon.create_model(name, image_size=size) if name != "yolov1" else canon.create_model(name)
        raw = model.forward_network(torch.empty(1, 3, size, size))
    raw = raw if isinstance(raw, list) else [raw]
    assert [tuple(r.shape) for r in raw] == shapes


@pytest.fixture(scope="module")
def small_yolov2():
    torch.manual_seed(0)
    return canon.create_model("yolov2", num_classes=4, image_size=128)


def test_yolov2_defaults_and_multiscale_sizes(small_yolov2):
    assert YOLOv2.multiscale_sizes == (320, 352, 384, 416, 448, 480, 512, 544, 576, 608)
    model = small_yolov2
    # yolo-voc.cfg's priors, in 32-px cells
    assert torch.allclose(model.anchors / 32, torch.tensor(VOC_PRIORS_V2))
    model.image_size = 608
    with pytest.raises(ValueError, match="multiple of 32"):
        model.image_size = 500
    model.image_size = 128


def test_yolov3_default_anchors_are_the_papers():
    assert COCO_ANCHORS_V3 == ((10, 13), (16, 30), (33, 23), (30, 61), (62, 45), (59, 119), (116, 90),
                               (156, 198), (373, 326))
    model = canon.create_model("yolov3", num_classes=2)
    tiny = canon.create_model("yolov3_tiny", num_classes=2)
    assert model.anchors.tolist() == [list(map(float, a)) for a in COCO_ANCHORS_V3]
    assert tiny.anchors.tolist() == [list(map(float, a)) for a in COCO_ANCHORS_V3_TINY]
    assert model.strides == (8, 16, 32) and tiny.strides == (16, 32)


# ----------------------------------------------------------------------------- v1 loss, transcribed


def scalar_iou(a, b):
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def paper_yolov1_loss(pred, boxes_per_image, labels_per_image, S, B, C, image_size, l_coord=5.0, l_noobj=0.5):
    """§2.2, term by term, one cell and one predictor at a time."""
    total = 0.0
    for n, (boxes, labels) in enumerate(zip(boxes_per_image, labels_per_image)):
        cell_object = {}
        for (x1, y1, x2, y2), label in zip(boxes.tolist(), labels.tolist()):
            cx, cy = (x1 + x2) / 2 / image_size, (y1 + y2) / 2 / image_size  # relative to the image
            row, col = int(cy * S), int(cx * S)
            cell_object.setdefault((row, col), (cx * S - col, cy * S - row, (x2 - x1) / image_size,
                                                (y2 - y1) / image_size, label))
        for i in range(S):
            for j in range(S):
                v = pred[n, i, j].tolist()
                obj = cell_object.get((i, j))
                ious = []
                if obj is not None:
                    tx, ty, tw, th, label = obj
                    gx, gy = (j + tx) / S, (i + ty) / S
                    truth = (gx - tw / 2, gy - th / 2, gx + tw / 2, gy + th / 2)
                    for b in range(B):
                        x, y, sw, sh = v[5 * b:5 * b + 4]
                        px, py, pw, ph = (j + x) / S, (i + y) / S, sw * sw, sh * sh
                        ious.append(scalar_iou((px - pw / 2, py - ph / 2, px + pw / 2, py + ph / 2), truth))
                    responsible = max(range(B), key=lambda b: (ious[b], -b))
                for b in range(B):
                    x, y, sw, sh, c = v[5 * b:5 * b + 5]
                    if obj is not None and b == responsible:
                        total += l_coord * ((x - tx) ** 2 + (y - ty) ** 2)
                        total += l_coord * ((sw - math.sqrt(tw)) ** 2 + (sh - math.sqrt(th)) ** 2)
                        total += (c - ious[b]) ** 2
                    else:
                        total += l_noobj * c ** 2
                if obj is not None:
                    total += sum((v[5 * B + k] - (1.0 if k == label - 1 else 0.0)) ** 2 for k in range(C))
    return total / len(boxes_per_image)


def test_yolov1_loss_equals_the_papers_sum_of_squares():
    torch.manual_seed(0)
    S, B, C, size = 4, 2, 3, 256
    # image 0's last box has its centre in the same cell as its first: the first listed keeps the cell
    boxes = [torch.tensor([[10.0, 20.0, 90.0, 120.0], [150.0, 30.0, 250.0, 100.0], [40.0, 150.0, 120.0, 250.0],
                           [20.0, 40.0, 80.0, 100.0]]),
             torch.tensor([[60.0, 60.0, 200.0, 230.0], [70.0, 70.0, 90.0, 80.0]])]
    labels = [torch.tensor([1, 3, 2, 3]), torch.tensor([2, 1])]
    pred = torch.rand(2, S, S, 5 * B + C, dtype=torch.float64)
    targets = torch.stack([yolov1_targets(b.double(), l, grid_size=S, num_object_classes=C, image_size=size)
                           for b, l in zip(boxes, labels)])
    terms = yolov1_loss(pred, targets, boxes_per_cell=B)
    expected = paper_yolov1_loss(pred, boxes, labels, S, B, C, size)
    assert set(terms) == {"xy", "wh", "object", "no_object", "classification"}
    assert sum(terms.values()).item() == pytest.approx(expected, rel=1e-10)
    # the other λs enter where the paper puts them
    terms = yolov1_loss(pred, targets, boxes_per_cell=B, lambda_coord=2.0, lambda_noobj=0.25)
    assert sum(terms.values()).item() == pytest.approx(
        paper_yolov1_loss(pred, boxes, labels, S, B, C, size, 2.0, 0.25), rel=1e-10)


def test_yolov1_loss_responsible_predictor_is_the_highest_iou_one():
    # one object in cell (0, 0); predictor 1 sits exactly on it, predictor 0 far off
    S, B, C, size = 2, 2, 1, 100
    target = yolov1_targets(torch.tensor([[10.0, 10.0, 30.0, 40.0]]), torch.tensor([1]), grid_size=S,
                            num_object_classes=C, image_size=size)[None]
    pred = torch.zeros(1, S, S, 5 * B + C)
    pred[0, 0, 0, :5] = torch.tensor([0.9, 0.9, 0.1, 0.1, 0.7])
    exact = torch.tensor([0.4, 0.5, math.sqrt(0.2), math.sqrt(0.3), 0.6])
    pred[0, 0, 0, 5:10] = exact
    terms = yolov1_loss(pred, target, boxes_per_cell=B)
    assert terms["xy"].item() == pytest.approx(0.0, abs=1e-10) and terms["wh"].item() == pytest.approx(0.0, abs=1e-6)
    assert terms["object"].item() == pytest.approx((0.6 - 1.0) ** 2, rel=1e-5)  # IoU target 1
    assert terms["no_object"].item() == pytest.approx(0.5 * 0.7 ** 2, rel=1e-6)  # predictor 0 is "no object"


# ----------------------------------------------------------------------------- encoders and decoders on real boxes


def raccoon_boxes(shared_data, names=("raccoon-1", "raccoon-10", "raccoon-100", "raccoon-105", "raccoon-12",
                                      "raccoon-150", "raccoon-177", "raccoon-2")):
    folder = shared_data / "raccoon" / "annotations"
    if not folder.is_dir():
        pytest.skip(f"raccoon annotations not found in {folder}")
    out = []
    for name in names:
        root = ET.parse(folder / f"{name}.xml").getroot()
        width, height = int(root.find("size/width").text), int(root.find("size/height").text)
        boxes = [[float(o.find(f"bndbox/{k}").text) for k in ("xmin", "ymin", "xmax", "ymax")]
                 for o in root.iter("object")]
        out.append((width, height, torch.tensor(boxes, dtype=torch.float64)))
    return out


def test_yolov1_encoder_decoder_round_trip_on_raccoon_boxes(shared_data):
    size, S = 448, 7
    for width, height, boxes in raccoon_boxes(shared_data):
        boxes = boxes * torch.tensor([size / width, size / height, size / width, size / height], dtype=torch.float64)
        labels = torch.ones(len(boxes), dtype=torch.int64)
        target = yolov1_targets(boxes, labels, grid_size=S, num_object_classes=1, image_size=size)
        for box in boxes.tolist():
            cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
            row, col = int(cy / size * S), int(cx / size * S)  # the cell containing the centre
            cell = target[row, col]
            assert cell[4] == 1 and cell[5] == 1
            assert 0 <= cell[0] < 1 and 0 <= cell[1] < 1
            params = torch.stack([cell[0], cell[1], cell[2].sqrt(), cell[3].sqrt()])
            grid = torch.zeros(S, S, 1, 4, dtype=torch.float64)
            grid[row, col, 0] = params
            decoded = decode_yolov1_boxes(grid, size)[row, col, 0]
            assert torch.allclose(decoded, torch.tensor(box, dtype=torch.float64), atol=1e-9)
        assert int(target[..., 4].sum()) == len({(int((b[1] + b[3]) / 2 / size * S), int((b[0] + b[2]) / 2 / size * S))
                                                 for b in boxes.tolist()})


def test_anchor_decoder_is_the_papers_equations_and_inverts_on_raccoon_boxes(shared_data):
    torch.manual_seed(0)
    anchors = torch.tensor(COCO_ANCHORS_V3[6:], dtype=torch.float64)
    stride, grid = 32, 13
    raw = torch.randn(1, grid, grid, 3, 4, dtype=torch.float64)
    boxes = decode_anchor_boxes(raw, anchors, stride)
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    for row, col, a in [(0, 0, 0), (3, 7, 1), (12, 12, 2), (5, 0, 2)]:
        tx, ty, tw, th = raw[0, row, col, a].tolist()
        bx, by = (sig(tx) + col) * stride, (sig(ty) + row) * stride  # b_x = σ(t_x) + c_x, in pixels
        bw, bh = anchors[a, 0].item() * math.exp(tw), anchors[a, 1].item() * math.exp(th)  # b_w = p_w e^{t_w}
        assert boxes[0, row, col, a].tolist() == pytest.approx([bx - bw / 2, by - bh / 2, bx + bw / 2, by + bh / 2])
    # inverse on real boxes: t_x = logit(offset), t_w = ln(w / p_w)
    size = 416
    for width, height, real in raccoon_boxes(shared_data):
        real = real * torch.tensor([size / width, size / height, size / width, size / height], dtype=torch.float64)
        for box in real:
            centre, wh = (box[:2] + box[2:]) / 2 / stride, box[2:] - box[:2]
            col, row = int(centre[0]), int(centre[1])
            offset = centre - torch.tensor([col, row], dtype=torch.float64)
            raw = torch.zeros(1, grid, grid, 3, 4, dtype=torch.float64)
            raw[0, row, col, 1, :2] = torch.log(offset / (1 - offset))
            raw[0, row, col, 1, 2:] = torch.log(wh / anchors[1])
            assert torch.allclose(decode_anchor_boxes(raw, anchors, stride)[0, row, col, 1], box, atol=1e-9)


def test_anchor_assignment_is_the_best_shape_iou_over_all_levels(shared_data):
    anchors = torch.tensor(COCO_ANCHORS_V3, dtype=torch.float64)
    size, strides = 416, (8, 16, 32)
    boxes = []
    for width, height, real in raccoon_boxes(shared_data):
        boxes.append(real * torch.tensor([size / width, size / height, size / width, size / height],
                                         dtype=torch.float64))
    boxes = torch.cat(boxes + [torch.tensor([[5.0, 5.0, 15.0, 18.0], [200.0, 200.0, 230.0, 260.0]],
                                            dtype=torch.float64)])
    grids = [(size // s, size // s) for s in strides]
    got = assign_anchors(boxes, anchors, [3, 3, 3], strides, grids)
    seen = set()
    expected = []
    for k, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
        w, h = x2 - x1, y2 - y1
        shape_iou = [min(w, aw) * min(h, ah) / (w * h + aw * ah - min(w, aw) * min(h, ah)) for aw, ah in
                     anchors.tolist()]
        best = max(range(9), key=lambda i: (shape_iou[i], -i))
        level, a = best // 3, best % 3
        col, row = int((x1 + x2) / 2 / strides[level]), int((y1 + y2) / 2 / strides[level])
        if (level, row, col, a) not in seen:
            seen.add((level, row, col, a))
            expected.append((k, level, row, col, a))
    assert got == expected
    assert {e[1] for e in expected} == {0, 1, 2}  # the small extra boxes reach the fine levels


# ----------------------------------------------------------------------------- v3 loss, transcribed


def bce(logit, target):
    p = 1 / (1 + math.exp(-logit))
    return -(target * math.log(p) + (1 - target) * math.log(1 - p))


def paper_yolov3_loss(raw_levels, targets, anchors, strides, image_size, ignore_threshold=0.5):
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    box_term = obj_term = cls_term = 0.0
    for n, target in enumerate(targets):
        gts = target["boxes"].tolist()
        labels = target["labels"].tolist()
        responsible = {}
        for k, (x1, y1, x2, y2) in enumerate(gts):
            w, h = x2 - x1, y2 - y1
            ious = [min(w, aw) * min(h, ah) / (w * h + aw * ah - min(w, aw) * min(h, ah)) for aw, ah in anchors]
            best = max(range(len(anchors)), key=lambda i: (ious[i], -i))
            level, a = best // 3, best % 3
            col, row = int((x1 + x2) / 2 / strides[level]), int((y1 + y2) / 2 / strides[level])
            responsible.setdefault((level, row, col, a), k)
        for level, raw in enumerate(raw_levels):
            stride = strides[level]
            _, H, W, A, _ = raw.shape
            for row in range(H):
                for col in range(W):
                    for a in range(A):
                        v = raw[n, row, col, a].tolist()
                        aw, ah = anchors[3 * level + a]
                        bx, by = (sig(v[0]) + col) * stride, (sig(v[1]) + row) * stride
                        bw, bh = aw * math.exp(v[2]), ah * math.exp(v[3])
                        pred = (bx - bw / 2, by - bh / 2, bx + bw / 2, by + bh / 2)
                        k = responsible.get((level, row, col, a))
                        if k is not None:
                            x1, y1, x2, y2 = gts[k]
                            w, h = x2 - x1, y2 - y1
                            ox, oy = (x1 + x2) / 2 / stride - col, (y1 + y2) / 2 / stride - row
                            box_term += (2 - w * h / image_size ** 2) * (
                                (sig(v[0]) - ox) ** 2 + (sig(v[1]) - oy) ** 2
                                + (v[2] - math.log(w / aw)) ** 2 + (v[3] - math.log(h / ah)) ** 2)
                            obj_term += bce(v[4], 1.0)
                            cls_term += sum(bce(v[5 + c], 1.0 if c == labels[k] - 1 else 0.0)
                                            for c in range(len(v) - 5))
                        elif max([scalar_iou(pred, g) for g in gts] or [0.0]) <= ignore_threshold:
                            obj_term += bce(v[4], 0.0)
    n = len(targets)
    return box_term / n, obj_term / n, cls_term / n


def test_yolov3_loss_equals_a_transcription_of_its_rules():
    torch.manual_seed(1)
    size, strides = 64, (16, 32)
    anchors = [(8.0, 10.0), (14.0, 20.0), (24.0, 18.0), (30.0, 40.0), (50.0, 36.0), (60.0, 60.0)]
    raw_levels = [torch.randn(2, 4, 4, 3, 5 + 2, dtype=torch.float64) * 0.5,
                  torch.randn(2, 2, 2, 3, 5 + 2, dtype=torch.float64) * 0.5]
    # place a prediction on top of an object so the ignore rule is exercised
    # (prior 4, not the responsible prior 3 of the object it overlaps)
    raw_levels[1][0, 0, 1, 1, :4] = torch.tensor([0.0, 0.0, math.log(35 / 50), math.log(38 / 36)])
    targets = [{"boxes": torch.tensor([[4.0, 6.0, 14.0, 18.0], [30.0, 2.0, 62.0, 44.0], [20.0, 30.0, 44.0, 50.0]],
                                      dtype=torch.float64), "labels": torch.tensor([1, 2, 2])},
               {"boxes": torch.zeros(0, 4, dtype=torch.float64), "labels": torch.zeros(0, dtype=torch.int64)}]
    terms = yolov3_loss(raw_levels, targets, anchors=torch.tensor(anchors, dtype=torch.float64),
                        anchors_per_level=[3, 3], strides=strides, image_size=size)
    box_term, obj_term, cls_term = paper_yolov3_loss(raw_levels, targets, anchors, strides, size)
    assert terms["box"].item() == pytest.approx(box_term, rel=1e-9)
    assert terms["objectness"].item() == pytest.approx(obj_term, rel=1e-9)
    assert terms["classification"].item() == pytest.approx(cls_term, rel=1e-9)


def paper_yolov2_loss(raw, targets, anchors, stride, image_size, ignore_threshold=0.6, object_scale=5.0):
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    box_term = obj_term = noobj_term = cls_term = 0.0
    for n, target in enumerate(targets):
        gts, labels = target["boxes"].tolist(), target["labels"].tolist()
        responsible = {}
        for k, (x1, y1, x2, y2) in enumerate(gts):
            w, h = x2 - x1, y2 - y1
            ious = [min(w, aw) * min(h, ah) / (w * h + aw * ah - min(w, aw) * min(h, ah)) for aw, ah in anchors]
            a = max(range(len(anchors)), key=lambda i: (ious[i], -i))
            responsible.setdefault((int((y1 + y2) / 2 / stride), int((x1 + x2) / 2 / stride), a), k)
        _, H, W, A, _ = raw.shape
        for row in range(H):
            for col in range(W):
                for a in range(A):
                    v = raw[n, row, col, a].tolist()
                    aw, ah = anchors[a]
                    bx, by = (sig(v[0]) + col) * stride, (sig(v[1]) + row) * stride
                    bw, bh = aw * math.exp(v[2]), ah * math.exp(v[3])
                    pred = (bx - bw / 2, by - bh / 2, bx + bw / 2, by + bh / 2)
                    k = responsible.get((row, col, a))
                    if k is not None:
                        x1, y1, x2, y2 = gts[k]
                        w, h = x2 - x1, y2 - y1
                        ox, oy = (x1 + x2) / 2 / stride - col, (y1 + y2) / 2 / stride - row
                        box_term += (2 - w * h / image_size ** 2) * (
                            (sig(v[0]) - ox) ** 2 + (sig(v[1]) - oy) ** 2
                            + (v[2] - math.log(w / aw)) ** 2 + (v[3] - math.log(h / ah)) ** 2)
                        obj_term += object_scale * (sig(v[4]) - scalar_iou(pred, gts[k])) ** 2
                        logits = v[5:]
                        top = max(logits)
                        cls_term += -(logits[labels[k] - 1] - top - math.log(sum(math.exp(z - top) for z in logits)))
                    elif max([scalar_iou(pred, g) for g in gts] or [0.0]) <= ignore_threshold:
                        noobj_term += sig(v[4]) ** 2
    n = len(targets)
    return box_term / n, obj_term / n, noobj_term / n, cls_term / n


def test_yolov2_loss_equals_a_transcription_of_darknets_region_rules():
    torch.manual_seed(2)
    size, stride = 96, 32
    anchors = [(a * 32, b * 32) for a, b in VOC_PRIORS_V2]
    raw = torch.randn(2, 3, 3, 5, 5 + 3, dtype=torch.float64) * 0.5
    # a non-responsible prediction on top of an object: neither "object" nor "no object"
    raw[1, 1, 1, 1, :4] = torch.tensor([0.0, 0.0, math.log(40 / anchors[1][0]), math.log(60 / anchors[1][1])])
    targets = [{"boxes": torch.tensor([[4.0, 6.0, 60.0, 70.0], [50.0, 10.0, 94.0, 90.0]], dtype=torch.float64),
                "labels": torch.tensor([3, 1])},
               {"boxes": torch.tensor([[28.0, 18.0, 68.0, 78.0], [10.0, 10.0, 20.0, 25.0]], dtype=torch.float64),
                "labels": torch.tensor([2, 2])}]
    terms = yolov2_loss(raw, targets, anchors=torch.tensor(anchors, dtype=torch.float64), stride=stride,
                        image_size=size)
    box_term, obj_term, noobj_term, cls_term = paper_yolov2_loss(raw, targets, anchors, stride, size)
    assert terms["box"].item() == pytest.approx(box_term, rel=1e-9)
    assert terms["object"].item() == pytest.approx(obj_term, rel=1e-9)
    assert terms["no_object"].item() == pytest.approx(noobj_term, rel=1e-9)
    assert terms["classification"].item() == pytest.approx(cls_term, rel=1e-9)


# ----------------------------------------------------------------------------- the call contract


def _small(name, **kwargs):
    torch.manual_seed(0)
    return canon.create_model(name, num_classes=4, image_size=128, **kwargs)  # 3 object classes


@pytest.mark.parametrize("name", ["yolov1_fast", "yolov3_tiny"])
def test_bad_targets_raise_value_errors_naming_the_expectation(name):
    model = _small(name).train()
    images = [torch.rand(3, 64, 80)]
    good = torch.tensor([[1.0, 2.0, 30.0, 40.0]])
    with pytest.raises(ValueError, match=r"1\.\.3"):
        model(images, [{"boxes": good, "labels": torch.tensor([4])}])
    with pytest.raises(ValueError, match=r"1\.\.3.*0 is background; num_classes=4"):
        model(images, [{"boxes": good, "labels": torch.tensor([0])}])
    with pytest.raises(ValueError, match=r"\[N, 4\].*x1 < x2"):
        model(images, [{"boxes": torch.rand(1, 5), "labels": torch.tensor([1])}])
    with pytest.raises(ValueError, match=r"x1 < x2.*box 0"):
        model(images, [{"boxes": torch.tensor([[30.0, 2.0, 10.0, 40.0]]), "labels": torch.tensor([1])}])
    with pytest.raises(ValueError, match="targets are required"):
        model(images)
    with pytest.raises(ValueError, match=r"\[3, H, W\]"):
        model([torch.rand(1, 3, 64, 64)], [{"boxes": good, "labels": torch.tensor([1])}])


@pytest.mark.parametrize("name", ["yolov1_fast", "yolov3_tiny"])
def test_images_of_different_sizes_batch_like_one_at_a_time(name):
    model = _small(name, score_threshold=0.0).eval()
    images = [torch.rand(3, 90, 160), torch.rand(3, 128, 128), torch.rand(3, 50, 40)]
    with torch.no_grad():
        together = model(images)
        alone = [model([image])[0] for image in images]
    for image, a, b in zip(images, together, alone):
        assert a["boxes"].shape[0] > 0
        assert torch.allclose(a["boxes"], b["boxes"], atol=1e-4) and torch.equal(a["labels"], b["labels"])
        assert torch.allclose(a["scores"], b["scores"], atol=1e-6)
        height, width = image.shape[1:]
        assert (a["boxes"][:, 0::2] <= width + 1e-4).all() and (a["boxes"][:, 1::2] <= height + 1e-4).all()
        assert a["labels"].min() >= 1 and a["labels"].max() <= 3


def test_detections_are_scaled_back_to_each_images_pixels():
    model = _small("yolov3_tiny", score_threshold=0.0).eval()
    image = torch.rand(3, 64, 256)
    with torch.no_grad():
        raw = model.forward_network(torch.nn.functional.interpolate(image[None], size=(128, 128), mode="bilinear",
                                                                    align_corners=False))
        boxes, scores = model.decode(raw)
        best = scores[0].flatten().argmax()
        expected = boxes[0, best // 3].clamp(0, 128) * torch.tensor([2.0, 0.5, 2.0, 0.5])
        detection = model([image])[0]
    assert torch.allclose(detection["boxes"][0], expected, atol=1e-4)
    assert detection["labels"][0] == best % 3 + 1


@pytest.mark.parametrize("name", ["yolov1_fast", "yolov2", "yolov3_tiny"])
def test_train_mode_returns_finite_losses_with_gradients_and_empty_images(name, small_yolov2):
    model = (small_yolov2 if name == "yolov2" else _small(name)).train()
    images = [torch.rand(3, 100, 120), torch.rand(3, 70, 70)]
    targets = [{"boxes": torch.tensor([[10.0, 10.0, 60.0, 80.0], [50.0, 5.0, 110.0, 40.0]]),
                "labels": torch.tensor([1, 3])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    losses = model(images, targets)
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_v1_image_size_is_fixed_by_its_fully_connected_head():
    model = _small("yolov1_fast")
    with pytest.raises(ValueError, match="image_size=192"):
        model.image_size = 192
    with pytest.raises(ValueError, match="multiple of 64"):
        canon.create_model("yolov1_fast", image_size=100)


# ----------------------------------------------------------------------------- overfit (slow)


def painted_rectangles(n=4, size=128, seed=0):
    """n images of grey noise with 1-3 solid red (class 1) or blue (class 2) rectangles each."""
    g = torch.Generator().manual_seed(seed)
    colours = {1: (0.9, 0.1, 0.1), 2: (0.1, 0.2, 0.9)}
    images, targets = [], []
    for i in range(n):
        image = torch.full((3, size, size), 0.5) + 0.05 * torch.randn(3, size, size, generator=g)
        boxes, labels = [], []
        while len(boxes) < 1 + i % 3:
            w, h = (int(torch.randint(20, 56, (1,), generator=g)) for _ in range(2))
            x = int(torch.randint(0, size - w, (1,), generator=g))
            y = int(torch.randint(0, size - h, (1,), generator=g))
            box = torch.tensor([x, y, x + w, y + h], dtype=torch.float32)
            if boxes and canon.ops.box_iou(box[None], torch.stack(boxes)).max() > 0.1:
                continue
            label = 1 + int(torch.randint(0, 2, (1,), generator=g))
            image[:, y:y + h, x:x + w] = torch.tensor(colours[label])[:, None, None]
            boxes.append(box)
            labels.append(label)
        images.append(image.clamp(0, 1))
        targets.append({"boxes": torch.stack(boxes), "labels": torch.tensor(labels)})
    return images, targets


def ap50_on(model, images, targets):
    from canon.metrics import coco_evaluate
    model.eval()
    with torch.no_grad():
        detections = model(images)
    labels = sorted({int(label) for t in targets for label in t["labels"].tolist()})
    gt = {"images": [{"id": i} for i in range(len(images))], "categories": [{"id": c} for c in labels],
          "annotations": []}
    for i, t in enumerate(targets):
        for (x1, y1, x2, y2), label in zip(t["boxes"].tolist(), t["labels"].tolist()):
            gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": i, "category_id": label,
                                      "iscrowd": 0, "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1)})
    results = [{"image_id": i, "category_id": int(label), "score": float(score), "bbox": [x1, y1, x2 - x1, y2 - y1]}
               for i, d in enumerate(detections)
               for (x1, y1, x2, y2), label, score in zip(d["boxes"].tolist(), d["labels"].tolist(),
                                                         d["scores"].tolist())]
    return coco_evaluate(gt, results)["AP50"]


def fit_full_batch(model, images, targets, steps: int, lr: float) -> None:
    """``steps`` Adam steps on the whole set at once: the summed loss dict of a canon detector."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        loss = sum(model(images, targets).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


@pytest.mark.slow
@pytest.mark.parametrize("name, kwargs, num_images, steps", [
    ("yolov1_fast", {"grid_size": 8}, 4, 110),
    ("yolov2", {}, 2, 40),
    ("yolov3_tiny", {}, 4, 40),
])
def test_overfits_painted_rectangles(name, kwargs, num_images, steps):
    torch.manual_seed(0)
    model = canon.create_model(name, num_classes=3, image_size=128, **kwargs).train()  # 2 classes + background
    images, targets = painted_rectangles(num_images)
    fit_full_batch(model, images, targets, steps, lr=1e-3)
    assert ap50_on(model, images, targets) >= 0.9
