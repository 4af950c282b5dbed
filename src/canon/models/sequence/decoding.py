"""Greedy and beam search as functions over a model's ``encode`` / ``decode_step``.

The search knows nothing about the model's insides; the model offers (see
:class:`canon.models.sequence.transformer.Transformer`, :class:`canon.models.sequence.rnn_seq2seq.LSTMAttentionSeq2Seq`):

    encoder_out = model.encode(src_tokens, src_padding_mask)      # dict of tensors, batch on dim 0
    logits, cache = model.decode_step(prefix, encoder_out, cache)  # prefix (N, t) -> logits (N, V)

and the attributes ``padding_idx``, ``bos_idx``, ``eos_idx``. ``cache`` is ``{}`` on the first step
when ``use_cache=True`` (each step then costs O(t): the model keeps its keys/values or recurrent
state) and ``None`` when ``use_cache=False`` (the model decodes the whole prefix again, O(t²) per
step — the reference the cache is tested against). Every tensor in ``encoder_out`` and in the cache
has the batch on dim 0, so the beam search reorders them with ``index_select(0, ...)``.

Beam search follows Wu et al., "Google's Neural Machine Translation System", 2016,
arXiv:1609.08144, section 7: hypotheses are ranked by log P(Y|X) / lp(Y) with the length penalty
lp(Y) = ((5 + |Y|) / 6)^α, where |Y| counts the generated tokens including the end-of-sentence
token. Conventions shared by both searches:
    - the maximum length defaults to each sentence's source length (its non-padding tokens) + 50
      tokens before the end-of-sentence token, as in the Transformer paper (section 6.1);
    - the padding and begin-of-sentence tokens are never generated;
    - the model runs in eval mode under ``torch.no_grad()`` and its mode is restored afterwards.

Beam search details (those of fairseq's ``SequenceGenerator``): each step keeps the best
``2·beam_size`` continuations; an end-of-sentence among the first ``beam_size`` of them finishes a
hypothesis, the best ``beam_size`` others stay alive; at the maximum length only the
end-of-sentence token is allowed. ``stop_early=True`` stops a sentence once it has ``beam_size``
finished hypotheses (fairseq's and Hugging Face's default; with beam size 1 this is exactly
greedy search). ``stop_early=False`` goes on until no live hypothesis can still beat the worst of
the kept finished ones: its best possible score is its log-probability so far over the largest
length penalty, lp(max length + 1), since log-probabilities only fall as tokens are added; a beam
wide enough to hold every prefix then returns the best-scoring sequences exactly.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

__all__ = ["Hypothesis", "length_penalty", "greedy_search", "beam_search"]


@dataclass(frozen=True)
class Hypothesis:
    """One output sentence: its tokens (no begin/end-of-sentence tokens), its total log-probability
    (including the end-of-sentence token when there is one) and its search score."""

    tokens: list[int]
    log_prob: float
    score: float


def length_penalty(length: int | float, alpha: float) -> float:
    """Wu et al. 2016: lp(Y) = ((5 + |Y|) / (5 + 1))^α."""
    return ((5.0 + length) / 6.0) ** alpha


def _map_tensors(fn: Callable[[torch.Tensor], torch.Tensor], tree: Any) -> Any:
    """Apply ``fn`` to every tensor in nested dicts, lists and tuples (the encoder output, the cache)."""
    if isinstance(tree, torch.Tensor):
        return fn(tree)
    if isinstance(tree, dict):
        return {k: _map_tensors(fn, v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_map_tensors(fn, v) for v in tree)
    return tree


def _special_index(model, name: str, value: int | None) -> int:
    if value is not None:
        return value
    if not hasattr(model, name):
        raise TypeError(f"{type(model).__name__} has no attribute {name!r}; pass {name}= to the search")
    return int(getattr(model, name))


def _prepare(model, src_tokens, src_padding_mask, max_length, padding_idx):
    if not isinstance(src_tokens, torch.Tensor) or src_tokens.dim() != 2:
        raise ValueError(f"src_tokens must be a 2-D (N, S) tensor of token ids, got "
                         f"{getattr(src_tokens, 'shape', type(src_tokens).__name__)}")
    if src_padding_mask is None:
        src_padding_mask = src_tokens == padding_idx
    if max_length is None:  # source length + 50
        max_lengths = (~src_padding_mask).sum(1) + 50
    else:
        if not isinstance(max_length, int) or max_length < 1:
            raise ValueError(f"max_length must be a positive integer or None (source length + 50), got {max_length!r}")
        max_lengths = torch.full((src_tokens.shape[0],), max_length, dtype=torch.long)
    return src_padding_mask, max_lengths.cpu()


def _next_token_log_probs(model, prefix, encoder_out, cache, padding_idx, bos_idx):
    logits, cache = model.decode_step(prefix, encoder_out, cache)
    log_probs = torch.log_softmax(logits.float(), dim=-1)  # (N, V)
    log_probs[:, padding_idx] = float("-inf")  # never generated
    log_probs[:, bos_idx] = float("-inf")
    return log_probs, cache


class _EvalMode:
    """Eval mode and no_grad for the search; the model's mode is restored afterwards."""

    def __init__(self, model):
        self.model, self.was_training = model, model.training
        self.no_grad = torch.no_grad()

    def __enter__(self):
        self.model.eval()
        self.no_grad.__enter__()

    def __exit__(self, *exc):
        self.no_grad.__exit__(*exc)
        self.model.train(self.was_training)


def greedy_search(model, src_tokens: torch.Tensor, src_padding_mask: torch.Tensor | None = None, *,
                  max_length: int | None = None, use_cache: bool = True, padding_idx: int | None = None,
                  bos_idx: int | None = None, eos_idx: int | None = None) -> list[Hypothesis]:
    """The most probable next token at every step, for a batch: src_tokens (N, S) -> N hypotheses.

    A sentence stops at its end-of-sentence token or after its maximum length (source length + 50
    by default, or ``max_length``) of other tokens. ``score`` equals ``log_prob``.
    """
    padding_idx = _special_index(model, "padding_idx", padding_idx)
    bos_idx = _special_index(model, "bos_idx", bos_idx)
    eos_idx = _special_index(model, "eos_idx", eos_idx)
    src_padding_mask, max_lengths = _prepare(model, src_tokens, src_padding_mask, max_length, padding_idx)
    n = src_tokens.shape[0]
    with _EvalMode(model):
        encoder_out = model.encode(src_tokens, src_padding_mask)
        prefix = torch.full((n, 1), bos_idx, dtype=torch.long, device=src_tokens.device)
        cache = {} if use_cache else None
        tokens: list[list[int]] = [[] for _ in range(n)]
        log_prob = [0.0] * n
        done = [False] * n
        for step in range(int(max_lengths.max())):
            log_probs, cache = _next_token_log_probs(model, prefix, encoder_out, cache, padding_idx, bos_idx)
            best_log_prob, best = log_probs.max(dim=-1)  # (N,)
            for i, (token, token_log_prob) in enumerate(zip(best.tolist(), best_log_prob.tolist())):
                if done[i]:
                    continue
                log_prob[i] += token_log_prob
                if token == eos_idx:
                    done[i] = True
                else:
                    tokens[i].append(token)
                    done[i] = len(tokens[i]) >= int(max_lengths[i])
            if all(done):
                break
            # Finished sentences are fed padding; their outputs are never read again.
            finished = torch.tensor(done, device=best.device)
            prefix = torch.cat([prefix, best.masked_fill(finished, padding_idx)[:, None]], dim=1)
    return [Hypothesis(tokens=t, log_prob=lp, score=lp) for t, lp in zip(tokens, log_prob)]


def beam_search(model, src_tokens: torch.Tensor, src_padding_mask: torch.Tensor | None = None, *,
                beam_size: int = 4, alpha: float = 0.6, max_length: int | None = None, use_cache: bool = True,
                stop_early: bool = True, return_all: bool = False, padding_idx: int | None = None,
                bos_idx: int | None = None, eos_idx: int | None = None) -> list[Hypothesis] | list[list[Hypothesis]]:
    """Beam search with Wu et al.'s length penalty: src_tokens (N, S) -> the best hypothesis per sentence.

    ``beam_size=4, alpha=0.6`` are the Transformer paper's settings (section 6.1). ``score`` is
    log P / lp(|Y|). ``return_all=True`` returns each sentence's finished hypotheses, best first
    (up to ``beam_size``). See the module docstring for ``stop_early``.
    """
    if not isinstance(beam_size, int) or beam_size < 1:
        raise ValueError(f"beam_size must be a positive integer, got {beam_size!r}")
    padding_idx = _special_index(model, "padding_idx", padding_idx)
    bos_idx = _special_index(model, "bos_idx", bos_idx)
    eos_idx = _special_index(model, "eos_idx", eos_idx)
    src_padding_mask, max_lengths = _prepare(model, src_tokens, src_padding_mask, max_length, padding_idx)
    n, k = src_tokens.shape[0], beam_size
    device = src_tokens.device
    with _EvalMode(model):
        encoder_out = model.encode(src_tokens, src_padding_mask)
        # Every sentence's encoder output repeated beam_size times: rows n·k ... n·k + k - 1.
        encoder_out = _map_tensors(lambda t: t.repeat_interleave(k, dim=0), encoder_out)
        prefix = torch.full((n * k, 1), bos_idx, dtype=torch.long, device=device)
        # Cumulative log-probabilities of the live hypotheses; at first only one per sentence is real.
        beam_log_probs = torch.full((n, k), float("-inf"), device=device)
        beam_log_probs[:, 0] = 0.0
        cache = {} if use_cache else None
        finished: list[list[Hypothesis]] = [[] for _ in range(n)]
        done = [False] * n
        max_penalty = [length_penalty(int(m) + 1, alpha) for m in max_lengths]
        for step in range(int(max_lengths.max()) + 1):
            log_probs, cache = _next_token_log_probs(model, prefix, encoder_out, cache, padding_idx, bos_idx)
            vocab_size = log_probs.shape[1]
            at_max = (max_lengths.to(device) <= step).repeat_interleave(k)  # (N·k,) only EOS is left
            if at_max.any():
                eos_column = log_probs[:, eos_idx].clone()
                log_probs[at_max] = float("-inf")
                log_probs[:, eos_idx] = eos_column
            candidates = (beam_log_probs.reshape(n * k, 1) + log_probs).reshape(n, k * vocab_size)
            top_log_probs, top_index = candidates.topk(min(2 * k, k * vocab_size), dim=1)  # (N, 2k)
            top_beam, top_token = top_index // vocab_size, top_index % vocab_size
            is_eos = top_token == eos_idx

            # Finish the end-of-sentence candidates ranked among the first k.
            first_log_probs, first_is_eos = top_log_probs[:, :k].tolist(), is_eos[:, :k].tolist()
            first_beam = top_beam[:, :k].tolist()
            for i in range(n):
                if done[i]:
                    continue
                for value, eos, beam in zip(first_log_probs[i], first_is_eos[i], first_beam[i]):
                    if eos and value > float("-inf"):
                        finished[i].append(Hypothesis(tokens=prefix[i * k + beam, 1:].tolist(), log_prob=value,
                                                      score=value / length_penalty(step + 1, alpha)))

            # The best k candidates that are not end-of-sentence stay alive (stable: by rank).
            width = top_token.shape[1]
            order = (is_eos.long() * width + torch.arange(width, device=device)).argsort(dim=1)[:, :k]
            alive_log_probs = top_log_probs.gather(1, order).masked_fill(is_eos.gather(1, order), float("-inf"))
            alive_beam, alive_token = top_beam.gather(1, order), top_token.gather(1, order)

            best_alive_log_probs = alive_log_probs[:, 0].tolist()
            for i in range(n):
                if done[i]:
                    continue
                finished[i].sort(key=lambda h: -h.score)
                finished[i] = finished[i][:k]
                best_alive = best_alive_log_probs[i]
                if step >= int(max_lengths[i]) or best_alive == float("-inf"):
                    done[i] = True
                elif len(finished[i]) >= k:
                    done[i] = stop_early or best_alive / max_penalty[i] <= finished[i][-1].score
            if all(done):
                break
            rows = (torch.arange(n, device=device)[:, None] * k + alive_beam).reshape(-1)  # (N·k,)
            prefix = torch.cat([prefix.index_select(0, rows), alive_token.reshape(-1, 1)], dim=1)
            if cache is not None:
                cache = _map_tensors(lambda t: t.index_select(0, rows), cache)
            beam_log_probs = alive_log_probs
    if return_all:
        return finished
    return [hypotheses[0] for hypotheses in finished]
