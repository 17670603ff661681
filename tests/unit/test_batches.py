"""Training batches: padding-free equals padded; gradient accumulation equals a bigger batch."""

import torch

from tests.tiny import tiny_llama, tiny_tokenizer
from tunelab.data.templates import encode_conversation
from tunelab.train.batches import training_collator


def encoded_rows(tokenizer, count=5):
    conversations = [[{"role": "user", "content": "x" * (k + 2)}, {"role": "assistant", "content": "yz" * (k + 1)}]
                     for k in range(count)]
    return [encode_conversation(tokenizer, c, {tokenizer.eos_token_id}) for c in conversations]


def test_padding_free_batch_gives_the_padded_loss_and_gradients():
    tokenizer = tiny_tokenizer()
    model = tiny_llama(tokenizer).train()
    examples = [{"input_ids": r.input_ids, "labels": r.labels} for r in encoded_rows(tokenizer)]
    results = []
    for padding_free in (False, True):
        model.zero_grad()
        loss = model(**training_collator(tokenizer.pad_token_id, padding_free)(examples)).loss
        loss.backward()
        results.append((loss.item(), model.model.layers[0].self_attn.q_proj.weight.grad.clone()))
    (padded_loss, padded_grad), (free_loss, free_grad) = results
    assert abs(padded_loss - free_loss) < 1e-5
    assert torch.allclose(padded_grad, free_grad, atol=1e-6)


def test_padding_free_batch_has_no_pad_tokens_and_restarts_positions():
    tokenizer = tiny_tokenizer()
    rows = encoded_rows(tokenizer, 3)
    batch = training_collator(tokenizer.pad_token_id, True)([{"input_ids": r.input_ids, "labels": r.labels}
                                                              for r in rows])
    assert batch["input_ids"].shape == (1, sum(len(r.input_ids) for r in rows))
    assert (batch["position_ids"] == 0).sum() == 3
    assert batch["use_cache"] is False


def test_length_multiple_adds_one_unlabelled_filler_row_and_keeps_the_loss():
    from dataclasses import replace

    from tunelab.train.row_attention import use_row_attention

    tokenizer = tiny_tokenizer()
    examples = [{"input_ids": r.input_ids, "labels": r.labels} for r in encoded_rows(tokenizer)]
    length = sum(len(example["input_ids"]) for example in examples)
    plain = training_collator(tokenizer.pad_token_id, True)
    rounded = replace(plain, length_multiple=16)(examples)
    assert length % 16 and rounded["input_ids"].shape[1] == length + (-length % 16)
    assert (rounded["position_ids"] == 0).sum() == len(examples) + 1  # the filler is a row of its own
    assert (rounded["labels"][0, length:] == -100).all()
    assert (rounded["input_ids"][0, length:] == tokenizer.pad_token_id).all()
    for attention in ("sdpa", "rows"):
        model = tiny_llama(tokenizer).train()
        if attention == "rows":
            use_row_attention(model)
        results = []
        for batch in (plain(examples), rounded):
            model.zero_grad()
            loss = model(**batch).loss
            loss.backward()
            results.append((loss.item(), model.model.layers[0].self_attn.q_proj.weight.grad.clone()))
        (loss_plain, grad_plain), (loss_rounded, grad_rounded) = results
        assert abs(loss_plain - loss_rounded) < 1e-5, attention
        assert torch.allclose(grad_plain, grad_rounded, atol=1e-6), attention
