"""mixup and CutMix against their papers' definitions; λ's distribution against scipy's Beta."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats

from canon.data.mixing import BatchMixer, cutmix, cutmix_box, mixup
from canon.engine import RunInfo, TrainConfig
from canon.tasks import train
from canon.tasks.classification import ClassificationTask


def test_mixup_is_the_convex_combination_of_images_and_one_hot_labels():
    images = torch.randn(4, 1, 5, 5)
    labels = torch.tensor([0, 1, 2, 1])
    perm = torch.tensor([2, 0, 3, 1])
    mixed, targets = mixup(images, labels, 3, 0.3, perm)
    for i, j in enumerate(perm.tolist()):
        torch.testing.assert_close(mixed[i], 0.3 * images[i] + 0.7 * images[j])
        expected = torch.zeros(3)
        expected[labels[i]] += 0.3
        expected[labels[j]] += 0.7
        torch.testing.assert_close(targets[i], expected)
    # Mixup's loss: CE against the soft targets is λ·CE(z, y_i) + (1−λ)·CE(z, y_j), per sample.
    logits = torch.randn(4, 3, dtype=torch.float64)
    log_p = logits.log_softmax(dim=1)
    by_hand = -(0.3 * log_p[torch.arange(4), labels] + 0.7 * log_p[torch.arange(4), labels[perm]]).mean()
    torch.testing.assert_close(F.cross_entropy(logits, targets.double()), by_hand)


def test_cutmix_pastes_the_box_from_the_partner_and_weights_labels_by_pixels_kept():
    images = torch.arange(2 * 1 * 6 * 8, dtype=torch.float32).reshape(2, 1, 6, 8)
    labels = torch.tensor([3, 5])
    perm = torch.tensor([1, 0])
    box = (1, 4, 2, 7)  # rows 1..3, columns 2..6: 15 of 48 pixels
    mixed, targets, lam = cutmix(images, labels, 10, box, perm)
    inside = torch.zeros(6, 8, dtype=torch.bool)
    inside[1:4, 2:7] = True
    assert torch.equal(mixed[0, 0][inside], images[1, 0][inside])
    assert torch.equal(mixed[0, 0][~inside], images[0, 0][~inside])
    assert lam == pytest.approx(1 - 15 / 48)
    assert targets[0, 3] == pytest.approx(lam) and targets[0, 5] == pytest.approx(1 - lam)
    assert targets.sum(dim=1).tolist() == pytest.approx([1.0, 1.0])


def test_cutmix_box_has_the_papers_size_and_stays_in_the_image():
    g = torch.Generator().manual_seed(0)
    for lam in (0.1, 0.5, 0.9):
        for _ in range(200):
            top, bottom, left, right = cutmix_box(32, 32, lam, generator=g)
            assert 0 <= top <= bottom <= 32 and 0 <= left <= right <= 32
            side = int(32 * np.sqrt(1 - lam))
            assert bottom - top <= side and right - left <= side  # clipped at the edges, never larger
    # Unclipped (centre far from the edges): exactly W·√(1−λ) on a side, rounded down to even halves.
    torch.manual_seed(0)
    sides = {(b - t, r - l) for t, b, l, r in (cutmix_box(1000, 1000, 0.75) for _ in range(50))}
    assert (500, 500) in sides


def test_mixing_lambda_follows_beta_alpha_alpha():
    torch.manual_seed(0)
    for alpha in (0.2, 0.8, 1.0):
        draws = [BatchMixer._beta(alpha) for _ in range(3000)]
        assert stats.kstest(draws, stats.beta(alpha, alpha).cdf).pvalue > 0.01, alpha


def test_batch_mixer_switches_between_cutmix_and_mixup():
    torch.manual_seed(0)
    images = torch.arange(8, dtype=torch.float32).view(8, 1, 1, 1).expand(8, 1, 16, 16).contiguous()
    labels = torch.arange(8)
    mixer = BatchMixer(8, mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.5)
    blended = 0
    for _ in range(400):
        mixed, targets = mixer(images, labels)
        assert torch.allclose(targets.sum(dim=1), torch.ones(8))
        # CutMix only copies pixels (whole numbers here); mixup blends them (fractions).
        blended += bool((mixed != mixed.round()).any())
    assert 0.4 < blended / 400 < 0.6
    only_cutmix = BatchMixer(8, cutmix_alpha=1.0)
    assert all(torch.equal(m, m.round()) for m, _ in (only_cutmix(images, labels) for _ in range(50)))
    assert not BatchMixer(8)
    for bad in (-0.1, float("nan"), "1"):
        with pytest.raises(ValueError, match="--mixup must be a number >= 0"):
            BatchMixer(8, mixup_alpha=bad)


def test_task_trains_on_the_mixed_batch_with_the_mixup_loss(monkeypatch):
    task = ClassificationTask(mixup=0.8, augment="none")
    task.build_data(RunInfo(config=TrainConfig(model="lenet5", data="digits"), device=torch.device("cpu")))
    monkeypatch.setattr(BatchMixer, "_beta", staticmethod(lambda alpha: 0.3))
    flip = torch.tensor([3, 2, 1, 0])
    monkeypatch.setattr("canon.data.mixing.torch.randperm", lambda n: flip)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(32 * 32, 10)).double()
    images, labels = torch.rand(4, 1, 32, 32, dtype=torch.float64), torch.tensor([1, 7, 7, 2])
    loss = task.compute_loss(model, (images, labels))
    log_p = model(0.3 * images + 0.7 * images[flip]).log_softmax(dim=1)
    rows = torch.arange(4)
    torch.testing.assert_close(loss, -(0.3 * log_p[rows, labels] + 0.7 * log_p[rows, labels[flip]]).mean())


def test_mixing_is_refused_for_a_segmentation_model(tmp_path):
    with pytest.raises(ValueError, match="mixup is an option of the classification task; unet is a segmentation"):
        train("unet", data="digits", mixup=0.2, out=str(tmp_path))
