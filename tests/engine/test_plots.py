import warnings

from canon.engine.plots import plot_curves


def test_plot_curves_writes_a_png(tmp_path):
    path = tmp_path / "curves.png"
    plot_curves([{"epoch": 1, "train_loss": 2.0, "test_loss": 2.5, "test_accuracy": 0.4},
                 {"epoch": 2, "train_loss": 1.0, "test_loss": 1.5, "test_accuracy": 0.6}], path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_curves_without_a_loss_column_warns_nothing(tmp_path):
    # a generation run logs one loss per player and no train_loss; the figure must still be written
    # without matplotlib's "No artists with labels found to put in legend" warning
    path = tmp_path / "curves.png"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plot_curves([{"epoch": 1, "train_generator_loss": 3.0, "test_fid": 200.0}], path)
    assert path.stat().st_size > 0

