"""Per-row decoding pieces of the server: stop strings never leak, top_p keeps the right tokens, seeds repeat."""

import torch

from tunelab.serve.rows import first_stop, safe_length, sample


def test_text_that_may_start_a_stop_string_is_held_back():
    assert safe_length("hello wor", ["world"]) == len("hello ")
    assert safe_length("hello", ["###", "lo!"]) == len("hel")
    assert safe_length("abc\ufffd", []) == 3  # half a character is never sent
    assert safe_length("abc", []) == 3
    assert first_stop("one. two. three", [". t", "ee"]) == 3


def test_top_p_keeps_the_smallest_set_reaching_p():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    drawn = {sample(logits, 1.0, 0.8, torch.Generator().manual_seed(seed)) for seed in range(200)}
    assert drawn == {0, 1}  # 0.5 + 0.3 reaches 0.8: tokens 2 and 3 are cut
    assert {sample(logits, 1.0, 0.4, torch.Generator().manual_seed(s)) for s in range(50)} == {0}


def test_the_same_seed_draws_the_same_tokens():
    logits = torch.randn(100, generator=torch.Generator().manual_seed(0))
    draws = [[sample(logits, 0.9, 1.0, generator) for _ in range(20)]
             for generator in (torch.Generator().manual_seed(3), torch.Generator().manual_seed(3))]
    assert draws[0] == draws[1] and len(set(draws[0])) > 1
