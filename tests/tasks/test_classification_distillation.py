"""DeiT distillation (hard and soft) through the trainer: a teacher trained at its own input size."""
import pytest
import torch
import torch.nn.functional as F

from canon import create_model as canon_model
from canon.engine.checkpoint import load_model
from canon.tasks import train
from canon.tasks.classification import ClassificationTask, TeacherAtItsInputSize


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("distillation") / "teacher"
    train("lenet5", data="digits", epochs=1, batch_size=32, lr=0.05, seed=0, out=str(out), progress=False)
    return out


def test_teacher_sees_the_batch_resized_to_its_own_size_and_stays_frozen():
    teacher = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.AdaptiveAvgPool2d(1),
                                  torch.nn.Flatten(), torch.nn.Linear(4, 10))
    teacher[1].running_mean.normal_()
    wrapped = TeacherAtItsInputSize(teacher, (32, 32))
    wrapped.train()
    assert not teacher.training  # batch-norm statistics are the teacher's, never updated
    x = torch.randn(3, 1, 28, 28)
    expected = teacher(F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False, antialias=True))
    torch.testing.assert_close(wrapped(x), expected)
    torch.testing.assert_close(wrapped(torch.ones(2, 1, 32, 32)), teacher(torch.ones(2, 1, 32, 32)))
    assert all(not p.requires_grad for p in wrapped.parameters())


def test_teacher_input_equals_the_data_pipeline_at_the_teachers_size():
    """Resizing the normalised 28 px batch gives what the teacher saw in its own training: the
    dataset's image resized to 32 px by canon.data.transforms, then normalised."""
    from canon.data import transforms as T

    image = torch.rand(1, 28, 28)  # an MNIST-like image in [0, 1]
    mean, std = [0.1307], [0.3081]
    seen = TeacherAtItsInputSize(torch.nn.Identity(), (32, 32))(T.normalize(image, mean, std).unsqueeze(0))
    expected = T.normalize(T.resize(image, (32, 32)), mean, std).unsqueeze(0)
    torch.testing.assert_close(seen, expected, rtol=1e-5, atol=1e-5)


def test_distilled_vit_at_28_px_trains_with_a_32_px_lenet_teacher(tmp_path, teacher_dir):
    teacher, meta = load_model(teacher_dir)
    assert meta["extra"]["input_size"] == [32, 32]

    seen = []
    original = TeacherAtItsInputSize.forward

    def spy(self, images):
        out = original(self, images)
        seen.append((tuple(images.shape[-2:]), tuple(out.shape)))
        return out

    TeacherAtItsInputSize.forward = spy
    try:
        metrics = train("deit_tiny_distilled_patch4_28", data="digits", input_size=(28, 28), epochs=1, batch_size=32,
                        lr=1e-3, optimizer="adamw", seed=0, max_steps_per_epoch=8, teacher=str(teacher_dir),
                        out=str(tmp_path / "student"), progress=False)
    finally:
        TeacherAtItsInputSize.forward = original
    assert len(seen) == 8 and all(size == (28, 28) and out[1] == 10 for size, out in seen)
    assert metrics["input_size"] == [28, 28] and 0.0 <= metrics["test_accuracy"] <= 1.0


def test_a_teacher_for_other_classes_is_refused(tmp_path, monkeypatch, teacher_dir):
    from canon.tasks import classification as classification_module

    def other_classes(path):
        model, meta = load_model(path)
        meta["extra"]["class_names"] = [f"c{i}" for i in range(10)]
        return model, meta

    monkeypatch.setattr(classification_module, "load_model", other_classes)
    with pytest.raises(ValueError, match="teacher must predict the student's classes"):
        train("deit_tiny_distilled_patch4_28", data="digits", input_size=(28, 28), epochs=1, max_steps_per_epoch=1,
              teacher=str(teacher_dir), out=str(tmp_path / "s"), progress=False)


@pytest.mark.parametrize("kind", ["hard", "soft"])
def test_the_task_trains_the_distillation_head_on_the_chosen_loss(kind):
    """ClassificationTask's loss for a distilled DeiT equals DeiT's eq. 2 / eq. 3 functions."""
    from canon.models.classification.deit import hard_distillation_loss, soft_distillation_loss

    torch.manual_seed(0)
    student = canon_model("deit_tiny_distilled_patch4_28", distilled_training=True).train()
    teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(28 * 28, 10)).eval()
    images, labels = torch.randn(4, 1, 28, 28), torch.randint(0, 10, (4,))
    # the teacher a run loads from --teacher RUN_DIR, set directly
    task = ClassificationTask(distillation=kind, distillation_tau=2.0, teacher="set below")
    task.teacher = teacher
    got = task.compute_loss(student, (images, labels))
    torch.manual_seed(0)
    outputs, teacher_logits = student(images), teacher(images)
    if kind == "hard":
        expected = hard_distillation_loss(outputs, labels, teacher_logits)
    else:
        expected = soft_distillation_loss(outputs, labels, teacher_logits, tau=2.0, alpha=0.1)
    torch.testing.assert_close(got, expected)


def test_distillation_options_are_checked_where_they_enter(tmp_path):
    with pytest.raises(ValueError, match="'hard' or 'soft', got 'sfot'"):
        ClassificationTask(distillation="sfot")
    with pytest.raises(ValueError, match=r"--distillation-alpha must be in \[0, 1\], got -0.1"):
        ClassificationTask(distillation_alpha=-0.1)
    with pytest.raises(ValueError, match="--distillation-tau must be > 0, got 0"):
        ClassificationTask(distillation="soft", distillation_tau=0)
    with pytest.raises(ValueError, match="need --teacher RUN_DIR"):
        train("deit_tiny_distilled_patch4_28", data="digits", distillation="soft", out=str(tmp_path / "s"))


def test_a_one_head_student_learns_from_label_and_teacher_on_the_same_logits():
    """deit_tiny_patch4_28 (no distillation token) with a teacher: DeiT's "usual distillation"
    (eq. 2 on the one head), (1−α)·CE(z_s, y) + α·τ²·KL(softmax(z_t/τ) ‖ softmax(z_s/τ)), written out."""
    torch.manual_seed(0)
    student = canon_model("deit_tiny_patch4_28").train()
    teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(28 * 28, 10)).eval()
    images, labels = torch.randn(6, 1, 28, 28), torch.randint(0, 10, (6,))
    task = ClassificationTask(distillation="soft", distillation_alpha=0.5, distillation_tau=3.0, teacher="set below")
    task.teacher = teacher
    got = task.compute_loss(student, (images, labels))

    torch.manual_seed(0)
    z_s = student(images).double()
    z_t = teacher(images).double()
    p_t = torch.exp(z_t / 3) / torch.exp(z_t / 3).sum(1, keepdim=True)
    log_p_s = z_s / 3 - torch.log(torch.exp(z_s / 3).sum(1, keepdim=True))
    kl = (p_t * (torch.log(p_t) - log_p_s)).sum(1).mean()
    log_q = z_s - torch.log(torch.exp(z_s).sum(1, keepdim=True))
    cross_entropy = -log_q[torch.arange(6), labels].mean()
    expected = 0.5 * cross_entropy + 0.5 * 9 * kl
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-6)
