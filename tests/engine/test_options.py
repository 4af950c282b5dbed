"""`canon train`'s flags come from the option dataclasses: every field is a flag with its default in
--help, a --config YAML file is read with the same keys, explicit flags win, and a flag of another
task, or an unknown key, is an error that says why."""
import dataclasses
import subprocess
import sys

import pytest

from canon.cli import UserError, train_from_argv
from canon.engine import TrainConfig
from canon.engine.options import flag_name, option_fields, split_options
from canon.tasks import all_task_classes
from canon.tasks.classification import ClassificationOptions, ClassificationTask
from canon.tasks.segmentation import SegmentationTask


def _help(*args):
    r = subprocess.run([sys.executable, "-m", "canon", "train", *args, "--help"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    return " ".join(r.stdout.split())  # argparse wraps lines


@pytest.mark.parametrize("model,task", [("lenet5", ClassificationTask), ("unet", SegmentationTask)])
def test_help_shows_every_engine_and_task_flag_with_its_default(model, task):
    from canon.cli import _train_parser

    helps = {a.option_strings[0]: a.help for a in _train_parser(task).\
             _actions if a.option_strings}
    for cls in (TrainConfig, task.Options):
        for field in option_fields(cls):
            flag = flag_name(field)
            assert flag in helps, flag
            if field.metadata.get("action") != "append":  # --model-arg K=V collects values, no default
                assert "default" in helps[flag], (flag, helps[flag])
    text = _help(model)
    assert "--batch-size BATCH_SIZE samples per optimizer step, over all processes and accumulated micro-batches " \
           "(default: 64)" in text
    others = [c for name, c in all_task_classes().items() if c is not task]
    only_theirs = {flag_name(f) for c in others for f in option_fields(c.Options)} - {
        flag_name(f) for f in option_fields(task.Options)}
    assert not any(f" {flag} " in text for flag in only_theirs), only_theirs


def test_help_without_a_model_lists_every_tasks_options():
    text = _help()
    for name, cls in all_task_classes().items():
        assert f"{name} options:" in text
        for field in option_fields(cls.Options):
            assert flag_name(field) in text


def test_config_file_keys_split_between_engine_and_task_and_flags_win(tmp_path):
    config_file = tmp_path / "run.yaml"
    config_file.write_text("model: lenet5\ndata: digits\nepochs: 7\nbatch_size: 16\nmixup: 0.4\n"
                           "input_size: [28, 28]\nmodel_kwargs: {num_classes: 10}\n")
    config, task = train_from_argv(["--config", str(config_file), "--epochs", "3", "--cutmix", "1.0"])
    assert config.model == "lenet5" and config.epochs == 3 and config.batch_size == 16
    assert config.model_kwargs == {"num_classes": 10}
    assert isinstance(task, ClassificationTask)
    assert (task.options.mixup, task.options.cutmix, task.options.input_size) == (0.4, 1.0, (28, 28))
    assert config.out == "runs/lenet5-digits"


def test_unknown_keys_and_other_tasks_flags_are_explained(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: lenet5\nepoch: 3\n")
    with pytest.raises(UserError, match=r"unknown key\(s\) 'epoch' \(did you mean 'epochs'\?\)"):
        train_from_argv(["--config", str(bad)])
    with pytest.raises(UserError, match="--mixup is an option of the classification task; unet is a segmentation"):
        train_from_argv(["unet", "--mixup", "0.2"])
    with pytest.raises(UserError, match="name a model"):
        train_from_argv(["--epochs", "2"])
    with pytest.raises(TypeError, match="valid options: .*mixup"):
        ClassificationTask(mixupp=0.2)


def test_engine_and_task_options_do_not_share_a_name():
    engine = {f.name for f in dataclasses.fields(TrainConfig)}
    for cls in all_task_classes().values():
        assert not engine & {f.name for f in dataclasses.fields(cls.Options)}, cls


def test_python_keywords_split_like_the_command_line():
    engine, task = split_options({"epochs": 2, "mixup": 0.1}, TrainConfig, ClassificationOptions)
    assert engine == {"epochs": 2} and task == {"mixup": 0.1}


def test_run_folder_config_yaml_is_a_valid_config_file(tmp_path):
    from canon.tasks import train

    run = tmp_path / "run"
    train("lenet5", data="digits", epochs=1, max_steps_per_epoch=2, batch_size=16, mixup=0.2, out=str(run),
          progress=False)
    config, task = train_from_argv(["--config", str(run / "config.yaml"), "--out", str(tmp_path / "again")])
    assert config.epochs == 1 and config.max_steps_per_epoch == 2 and task.options.mixup == 0.2
