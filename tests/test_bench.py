"""canon.bench: the best-mode picker's accuracy guard, and the structure of a benchmark run.

The guard is checked by injecting modes with known behaviour: one that is the fastest of all
(it returns a precomputed tensor) but off by 0.5, which must be rejected; one off by 1e-3,
within the 1e-2 tolerance, which must be accepted and win; one that raises. The GFLOP/s
figures are checked against their definition, 2 x multiply-adds x batch / seconds, with the
multiply-adds of LeNet-5 written out from its layer sizes.
"""
from __future__ import annotations

import pytest
import torch

import canon
from canon.bench import (MODES, Mode, accuracy_ok, bench, bench_model, best_mode, format_table, model_macs,
                         select_modes, time_call)


def _tiny() -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = canon.create_model("lenet5").eval()
    return model, torch.randn(2, 1, 32, 32)


def _constant_mode(name: str, offset: float, reference: torch.Tensor) -> Mode:
    out = reference + offset
    return Mode(name, lambda model, x: (lambda: out))  # no computation at all: faster than any real mode


def test_guard_rejects_a_fast_mode_whose_logits_differ():
    model, x = _tiny()
    with torch.no_grad():
        reference = model(x)
    result = best_mode(model, x, ["eager", "channels_last", _constant_mode("wrong_but_fast", 0.5, reference)],
                       repeats=2, min_seconds=0)
    by_name = {c.mode: c for c in result.candidates}
    assert not by_name["wrong_but_fast"].accepted and by_name["wrong_but_fast"].max_abs_diff == pytest.approx(0.5)
    assert by_name["wrong_but_fast"].seconds < by_name["eager"].seconds  # it was the fastest, and still lost
    assert result.mode in ("eager", "channels_last") and by_name["eager"].max_abs_diff == 0


def test_guard_accepts_a_close_mode_and_picks_the_fastest():
    model, x = _tiny()
    with torch.no_grad():
        reference = model(x)
    result = best_mode(model, x, [_constant_mode("close_and_fast", 1e-3, reference),
                                  Mode("broken", lambda m, x: (lambda: 1 / 0))], repeats=2, min_seconds=0)
    assert [c.mode for c in result.candidates] == ["eager", "close_and_fast", "broken"]  # eager always tried
    assert result.mode == "close_and_fast"
    broken = result.candidates[2]
    assert broken.seconds is None and not broken.accepted and "ZeroDivisionError" in broken.error
    with pytest.raises(ValueError, match="unknown mode"):
        best_mode(model, x, ["eager", "fp8"])


def test_tolerance_is_absolute_up_to_unit_logits_then_relative():
    ref = torch.tensor([0.5, -0.2])
    assert accuracy_ok(ref + 0.009, ref) == (True, pytest.approx(0.009))
    assert not accuracy_ok(ref + 0.011, ref)[0]
    big = torch.tensor([20.0, -3.0])
    assert accuracy_ok(big + 0.15, big)[0] and not accuracy_ok(big + 0.25, big)[0]  # 1e-2 x 20 = 0.2
    assert accuracy_ok(torch.zeros(3), torch.zeros(2)) == (False, float("inf"))


def test_builtin_modes_run_and_stay_close_on_a_tiny_model():
    model, x = _tiny()
    result = best_mode(model, x, ["eager", "channels_last", "bf16", "channels_last_bf16"], repeats=1, min_seconds=0)
    for c in result.candidates:
        assert c.error is None and c.max_abs_diff < 0.05, c
    assert set(MODES) >= {"eager", "channels_last", "bf16", "compile"}
    assert select_modes() == ["eager"]
    assert select_modes(channels_last=True, bf16=True) == ["eager", "channels_last", "bf16", "channels_last_bf16"]
    assert select_modes(best=True) == list(MODES)



@pytest.mark.slow
def test_compiled_and_frozen_modes_match_float32_eager():
    """The compiled modes (inductor, with freezing, with its C++ wrapper; the frozen TorchScript
    trace) compute what PyTorch's float32 eager forward computes, on a model with batch norm to fold."""
    torch.manual_seed(0)
    model = canon.create_model("resnet20_cifar").eval()
    x = torch.randn(2, 3, 32, 32)
    compiled = ["compile", "compile_frozen", "compile_frozen_channels_last", "compile_frozen_cpp", "jit_frozen"]
    result = best_mode(model, x, ["eager", *compiled], repeats=1, min_seconds=0)
    by_name = {c.mode: c for c in result.candidates}
    for name in compiled:
        assert by_name[name].error is None and by_name[name].max_abs_diff < 1e-4, by_name[name]
    assert select_modes(channels_last=True, compile=True)[-2:] == ["compile_frozen_channels_last",
                                                                   "compile_frozen_cpp"]

def test_bench_model_rows_and_figures(tmp_path):
    rows, info = bench_model("lenet5", batch_sizes=(1, 3), kind="both", modes=("eager", "channels_last"),
                             repeats=1, min_seconds=0, peak_gflops=100.0, workdir=tmp_path, threads=1)
    # LeNet-5 multiply-adds from its layers: C1 6x28x28x25, S2 6x14x14x4 (2x2 pooling), C3 16x10x10x150,
    # S4 16x5x5x4, C5 120x400, F6 84x120, output 10x84 (canon's summary counts pooling windows too)
    expected_macs = (6 * 28 * 28 * 25 + 6 * 14 * 14 * 4 + 16 * 10 * 10 * 150 + 16 * 5 * 5 * 4
                     + 120 * 400 + 84 * 120 + 10 * 84)
    assert model_macs(canon.create_model("lenet5"), (1, 1, 32, 32)) == expected_macs
    assert info["threads"] == 1 and info["matmul_gflops"] == 100.0 and info["onnx"]["max_abs_diff"] <= 1e-4
    assert info["gmacs"] == pytest.approx(expected_macs / 1e9)
    infer = [r for r in rows if r["kind"] == "infer"]
    train = [r for r in rows if r["kind"] == "train"]
    assert [(r["batch"], r["mode"]) for r in infer] == [(1, "eager"), (1, "channels_last"), (1, "onnxruntime"),
                                                      (3, "eager"), (3, "channels_last"), (3, "onnxruntime")]
    assert [(r["batch"], r["mode"]) for r in train] == [(1, "eager"), (1, "channels_last"), (3, "eager"),
                                                      (3, "channels_last")]
    for batch in (1, 3):
        assert sum(r["best"] for r in infer if r["batch"] == batch) == 1
    for r in rows:
        factor = 3 if r["kind"] == "train" else 1
        assert r["gflops"] == pytest.approx(factor * 2 * expected_macs * r["batch"] / r["seconds"] / 1e9)
        assert r["images_per_s"] == pytest.approx(r["batch"] / r["seconds"])
        assert r["of_matmul"] == pytest.approx(r["gflops"] / 100.0)
    ort = {r["batch"]: r["seconds"] for r in infer if r["mode"] == "onnxruntime"}
    for r in infer:
        if r["mode"] != "onnxruntime":
            assert r["vs_onnxruntime"] == pytest.approx(ort[r["batch"]] / r["seconds"])
        if r.get("best"):
            alt = r["interleaved"]
            assert alt["vs_onnxruntime"] == pytest.approx(alt["onnxruntime_seconds"] / alt["seconds"])
    table = format_table(rows, [info])
    assert "| lenet5 | 32x32 | 3 | infer | onnxruntime |" in table and "float32 matmul 100.0 GFLOP/s" in table


def test_bench_names_and_patterns():
    with pytest.raises(KeyError, match="lenet5"):
        bench("lenet55", batch_sizes=(1,), onnx=False, repeats=1, min_seconds=0)
    with pytest.raises(ValueError, match="no image model"):
        bench("nosuchmodel*", onnx=False)
    rows, infos = bench("lenet5*", batch_sizes=(1,), onnx=False, repeats=1, min_seconds=0)
    assert [i["model"] for i in infos] == ["lenet5", "lenet5_paper"] and len(rows) == 2


def test_time_call_counts_calls():
    calls = []
    seconds = time_call(lambda: calls.append(1), repeats=4, min_seconds=0, warmup=2)
    assert len(calls) == 6 and seconds >= 0


def test_command_line_options():
    import argparse

    from canon.bench import add_arguments, run

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["lenet5", "--batch-size", "1", "2", "--bf16", "--threads", "1", "--no-onnx",
                              "--repeats", "1"])
    assert args.batch_size == [1, 2] and args.bf16 and not args.channels_last and args.mode == "infer"
    rows, infos = run(args)
    assert [(r["batch"], r["mode"]) for r in rows] == [(1, "eager"), (1, "bf16"), (2, "eager"), (2, "bf16")]
    assert infos[0]["threads"] == 1


def test_interleaved_timing_alternates():
    from canon.bench import interleaved_seconds

    order = []
    a, b = interleaved_seconds(lambda: order.append("a"), lambda: order.append("b"), repeats=3)
    assert order == ["a", "b"] * 4 and a >= 0 and b >= 0


def test_stand_in_weights_give_trained_scale():
    from canon.bench import stand_in_weights
    from canon.export import example_input

    torch.manual_seed(0)
    vit = canon.create_model("vit_tiny_patch4_28").eval()
    x = example_input((4, 1, 28, 28))
    with torch.no_grad():
        assert not torch.any(vit(x))  # torchvision's zero head: every logit 0
        stand_in_weights(vit, x)
        assert float(vit(x).std()) > 1e-3
    resnet = canon.create_model("resnet20_cifar" if "resnet20_cifar" in canon.list_models() else "resnet18")
    x = example_input((8, 3, 32, 32))
    stand_in_weights(resnet, x)
    bn = next(m for m in resnet.modules() if isinstance(m, torch.nn.BatchNorm2d))
    with torch.no_grad():  # the first BatchNorm's running mean is its input's mean over the two passes
        first_conv = next(m for m in resnet.modules() if isinstance(m, torch.nn.Conv2d))
        expected = first_conv(x).mean(dim=(0, 2, 3))
    assert torch.allclose(bn.running_mean, expected, atol=1e-5) and not resnet.training
