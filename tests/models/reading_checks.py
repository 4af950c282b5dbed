"""Checks every reading-comprehension model's test runs: random padded batches, the forward
contract, padding invariance, gradients, bad inputs, and closed-form parameter counts of
torch's recurrent layers (from the equations in torch.nn.LSTM / torch.nn.GRU's documentation).
"""
from __future__ import annotations

import pytest
import torch

import canon
from canon.data.squad import best_spans

WORDS, CHARS = 40, 15
CONTEXT_LENGTHS, QUESTION_LENGTHS = (11, 7, 4), (5, 3, 1)


def random_batch(seed: int = 0, context_lengths=CONTEXT_LENGTHS, question_lengths=QUESTION_LENGTHS,
                 width: int = 6) -> dict[str, torch.Tensor]:
    """A right-padded batch in canon.data.squad's format, with words of 1..width characters."""
    g = torch.Generator().manual_seed(seed)

    def side(lengths):
        n, length = len(lengths), max(lengths)
        mask = torch.arange(length)[None, :] < torch.tensor(lengths)[:, None]
        words = torch.randint(1, WORDS, (n, length), generator=g) * mask
        word_lengths = torch.randint(1, width + 1, (n, length), generator=g)
        chars = torch.randint(1, CHARS, (n, length, width), generator=g)
        chars = chars * (torch.arange(width) < word_lengths[..., None]) * mask[..., None]
        return words, chars, mask

    context_words, context_chars, context_mask = side(context_lengths)
    question_words, question_chars, question_mask = side(question_lengths)
    question_words[0, 0] = context_words[0, 2]  # at least one exact match
    return {"context_words": context_words, "context_chars": context_chars, "question_words": question_words,
            "question_chars": question_chars, "context_mask": context_mask, "question_mask": question_mask}


def trim(batch: dict, index: int) -> dict:
    """Example ``index`` alone, without padding (also in the character dimension)."""
    c, q = int(batch["context_mask"][index].sum()), int(batch["question_mask"][index].sum())
    out = {}
    for side, length in (("context", c), ("question", q)):
        chars = batch[f"{side}_chars"][index:index + 1, :length]
        width = max(int((chars != 0).sum(-1).max()), 1)
        out[f"{side}_words"] = batch[f"{side}_words"][index:index + 1, :length]
        out[f"{side}_chars"] = chars[..., :width]
        out[f"{side}_mask"] = batch[f"{side}_mask"][index:index + 1, :length]
    return out


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def lstm_params(input_size: int, hidden: int, *, layers: int = 1, bidirectional: bool = True, gates: int = 4) -> int:
    """torch.nn.LSTM (gates=4) / GRU (gates=3): W_ih (G·h, in), W_hh (G·h, h), two biases, per direction."""
    directions = 2 if bidirectional else 1
    total = 0
    for layer in range(layers):
        size = input_size if layer == 0 else directions * hidden
        total += directions * (gates * hidden * (size + hidden) + 2 * gates * hidden)
    return total


def gru_params(input_size: int, hidden: int, **kwargs) -> int:
    return lstm_params(input_size, hidden, gates=3, **kwargs)


def embedding_params(word_dim, char_dim, char_channels, kernel, words=WORDS, chars=CHARS) -> int:
    """Word embedding + character embedding + character convolution (weights and biases)."""
    return words * word_dim + chars * char_dim + char_channels * char_dim * kernel + char_channels


def highway_params(dim, layers=2) -> int:
    return layers * 2 * (dim * dim + dim)


def check_registry_entry(name: str, model_class) -> None:
    info = canon.model_info(name)
    assert info.task == "reading" and info.input_size == () and info.num_classes is None
    assert info.model_class is model_class and ("arXiv" in info.paper or "ACL" in info.paper)
    with torch.device("meta"):
        model = canon.create_model(name)
    assert isinstance(model, model_class) and count(model) > 1_000_000


def check_forward_contract(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    model.eval()
    with torch.no_grad():
        start, end = model(**batch)
    mask = batch["context_mask"]
    assert start.shape == end.shape == mask.shape and start.dtype == torch.float32
    assert torch.isneginf(start[~mask]).all() and torch.isneginf(end[~mask]).all()
    assert torch.isfinite(start[mask]).all() and torch.isfinite(end[mask]).all()
    # even logits that favour the padding cannot make the decoder choose it
    starts, ends, probabilities = best_spans(start, end)
    lengths = mask.sum(1)
    assert (starts <= ends).all() and (ends < lengths).all() and (probabilities > 0).all()
    return start, end


def check_padding_invariance(model, batch, atol: float = 1e-5) -> None:
    """Each example alone, unpadded, gives the logits it gets inside the padded batch."""
    model.eval()
    with torch.no_grad():
        start, end = model(**batch)
        for index in range(batch["context_words"].shape[0]):
            alone_start, alone_end = model(**trim(batch, index))
            length = alone_start.shape[1]
            assert torch.allclose(start[index, :length], alone_start[0], atol=atol), index
            assert torch.allclose(end[index, :length], alone_end[0], atol=atol), index


def check_gradients_reach_every_parameter(model, batch) -> None:
    from canon.models.reading._common import span_loss

    model.train()
    torch.manual_seed(0)
    start, end = model(**batch)
    lengths = batch["context_mask"].sum(1)
    loss = span_loss(start, end, lengths // 3, lengths - 1)
    loss.backward()
    assert torch.isfinite(loss)
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"no gradient for {missing}"
    dead = [n for n, p in model.named_parameters() if p.grad.abs().sum() == 0]
    assert not dead, f"zero gradient for {dead}"


def check_bad_inputs(model, batch, name: str) -> None:
    def changed(**kw):
        return {**batch, **kw}

    cases = [
        (changed(context_chars=batch["context_chars"][:, :-1]), ValueError, "chars"),
        (changed(question_words=batch["question_words"][:2], question_chars=batch["question_chars"][:2],
                 question_mask=batch["question_mask"][:2]), ValueError, "batch size"),
        (changed(question_mask=batch["question_mask"] & torch.tensor([[True], [False], [True]])), ValueError,
         r"empty question at batch index \[1\]"),
        (changed(context_mask=batch["context_mask"].flip(1)), ValueError, "prefix"),
        (changed(context_mask=batch["context_mask"][:, :-1]), ValueError, "shape"),
        (changed(context_words=batch["context_words"].float()), TypeError, "torch.long"),
        (changed(context_mask=batch["context_mask"].long()), TypeError, "bool"),
        (changed(question_words=batch["question_words"] + WORDS), ValueError, rf"\[0, {WORDS}\)"),
        (changed(context_words=batch["context_words"][0]), ValueError, r"\(N, L\)"),
    ]
    for inputs, error, message in cases:
        with pytest.raises(error, match=message) as info:
            model(**inputs)
        assert name in str(info.value)
