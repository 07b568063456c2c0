"""What batching changes, measured: each sequence's attention alone (`models/attention.py`) gives the same bits as
the sequence answered alone, and the measuring script (`python -m fastervlm.bench.batching`) compares batch sizes."""

from __future__ import annotations

import pytest
import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from fastervlm.bench.batching import main, prefill_logits
from fastervlm.models.attention import row_attention, rows_alone


class _Head(torch.nn.Module):
    """What the attention functions read from the module: grouped-query settings, causality."""

    num_key_value_groups = 1
    is_causal = True


def _left_padded(rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, H, L, D) left-padded with zeros, and transformers' SDPA mask for it (B, 1, L, L): causal, no padding keys."""
    longest = max(r.shape[1] for r in rows)
    out = torch.zeros(len(rows), rows[0].shape[0], longest, rows[0].shape[2])
    mask = torch.zeros(len(rows), 1, longest, longest, dtype=torch.bool)
    causal = torch.ones(longest, longest, dtype=torch.bool).tril()
    for n, row in enumerate(rows):
        pad = longest - row.shape[1]
        out[n, :, pad:] = row
        mask[n, 0] = causal
        mask[n, 0, :, :pad] = False
    return out, mask


@pytest.mark.parametrize("lengths, queries", [([37, 600, 512, 3], "prefill"), ([37, 600, 512, 3], "decode")])
def test_row_attention_gives_each_row_the_bits_it_gets_alone(lengths: list[int], queries: str) -> None:
    generator = torch.Generator().manual_seed(0)
    q, k, v = ([torch.randn(4, n, 16, generator=generator) for n in lengths] for _ in range(3))
    if queries == "decode":  # one new query per row over its cached keys
        q = [row[:, -1:] for row in q]
    keys, mask = _left_padded(k)
    values, _ = _left_padded(v)
    if queries == "decode":
        query, mask = torch.stack(q), mask[:, :, -1:]
    else:
        query, _ = _left_padded(q)
    batched, _ = row_attention(_Head(), query, keys, values, mask)
    for n in range(len(lengths)):
        alone, _ = sdpa_attention_forward(_Head(), q[n][None], k[n][None], v[n][None], None)
        assert torch.equal(batched[n, -alone.shape[1]:], alone[0]), n


def test_row_attention_changes_nothing_for_a_batch_of_one(tiny_pipeline) -> None:
    pruner = tiny_pipeline.pruner("none")
    frames = tiny_pipeline.frames(pixels=torch.rand(tiny_pipeline.num_frames, 3, 112, 112))
    sample = tiny_pipeline.prepare(tiny_pipeline.encode(frames, [pruner]), pruner)
    stock = prefill_logits(tiny_pipeline.adapter, [sample], ["What moves?"])[0]
    with rows_alone(tiny_pipeline.adapter.llm):
        rows = prefill_logits(tiny_pipeline.adapter, [sample], ["What moves?"])[0]
    assert torch.equal(stock, rows)
    assert tiny_pipeline.adapter.llm.config._attn_implementation == "sdpa"  # restored


def test_the_measuring_script_compares_batch_sizes(capsys) -> None:
    assert main(["--videos", "1", "--questions", "3", "--max-new-tokens", "2", "--batch-sizes", "3"]) == 0
    out = capsys.readouterr().out
    assert "| 1 | 0 of 3 | - | 0 |" in out  # batch 1 against itself
    assert "\n| 3 | " in out and "1 videos x 3 questions, 2 new tokens" in out


def test_the_ops_measurements_compare_like_with_like() -> None:
    """A wrong mask or a shifted row would show as a difference of order 1, not rounding."""
    from fastervlm.bench.batching import _spans, attention_padding, matmul_prefill, matmul_rows

    prefill, decode = attention_padding(heads=2, head_dim=8, keys=50, pad=7)
    assert 0 <= prefill < 1e-5 and 0 <= decode < 1e-5
    assert matmul_prefill((32, 16), rows=10) < 1e-5
    same_as_1, same_as_2 = matmul_rows((32, 16), most=4)
    assert 1 in same_as_1 and 2 in same_as_2
    assert _spans([1, 2, 3, 5, 7, 8]) == "1-3, 5, 7-8"
