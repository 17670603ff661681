"""PPO (train/ppo.py) on a tiny random model: GAE against a hand computation, a toy rule reward that rises, the
reference is the policy with its adapter off (no second copy of the weights), and resume gives the same weights."""

from __future__ import annotations

import pytest
import torch

from tests.unit.test_training import StopAt
from tunelab.train.ppo import VALUE_HEAD, PPOSettings, PPOTrainer, ValueHead, completion_mask, gae

LETTERS = "abcdefgh"
TARGETS = ["lm_head", "q_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def letters(prompts, completions, **columns):
    """The toy rule reward: the share of the answer's characters among a..h (about 0.1 for the random model)."""
    return [sum(ch in LETTERS for ch in text) / max(len(text), 1) for text in completions]


def test_gae_matches_a_hand_computation():
    rewards = torch.tensor([[0.0, 0.0, 1.0, 5.0]])
    values = torch.tensor([[0.5, 0.2, 0.1, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])  # the last position is after EOS
    advantages, returns = gae(rewards, values * mask, mask, gamma=0.9, lam=0.5)
    delta = [0.0 + 0.9 * 0.2 - 0.5, 0.0 + 0.9 * 0.1 - 0.2, 1.0 - 0.1]
    a2 = delta[2]
    a1 = delta[1] + 0.45 * a2
    a0 = delta[0] + 0.45 * a1
    assert advantages.tolist()[0] == pytest.approx([a0, a1, a2, 0.0])
    assert returns.tolist()[0][:3] == pytest.approx([a0 + 0.5, a1 + 0.2, a2 + 0.1])


def test_the_completion_mask_ends_at_the_first_eos():
    completion = torch.tensor([[5, 2, 7, 2], [5, 6, 7, 8]])
    assert completion_mask(completion, eos_id=2).tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]


def ppo_trainer(tiny_checkpoint, tmp_path, steps, callbacks=(), save_steps=None, settings=None, reward=None):
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainingArguments, set_seed

    set_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_checkpoint))
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(str(tiny_checkpoint)),
                           LoraConfig(r=8, lora_alpha=16, target_modules=TARGETS))
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": word}], tokenize=False,
                                             add_generation_prompt=True)
               for word in ["abc", "bcd", "cde", "def", "efg", "fgh", "ghi", "hij"] * 20]
    args = TrainingArguments(output_dir=str(tmp_path / "ppo"), use_cpu=True, max_steps=steps,
                             per_device_train_batch_size=8, learning_rate=1e-2, logging_steps=1, report_to=[],
                             save_strategy="steps" if save_steps else "no", save_steps=save_steps,
                             remove_unused_columns=False, disable_tqdm=True, seed=0, data_seed=0)
    return PPOTrainer(model=model, args=args, train_dataset=Dataset.from_list([{"prompt": p} for p in prompts]),
                      processing_class=tokenizer, reward_funcs=[reward or letters],
                      value_head=ValueHead(model.config.hidden_size),
                      settings=settings or PPOSettings(max_new_tokens=8, ppo_epochs=2), callbacks=list(callbacks))


def test_ppo_raises_a_toy_rule_reward(tiny_checkpoint, tmp_path):
    trainer = ppo_trainer(tiny_checkpoint, tmp_path, steps=70)
    trainer.train()
    rewards = [entry["reward"] for entry in trainer.state.log_history if "reward" in entry]
    first, last = sum(rewards[:10]) / 10, sum(rewards[-10:]) / 10
    assert last > 2 * first and last > 0.25, (first, last)
    assert trainer.state.num_input_tokens_seen > 70 * 8 * 8  # each step trains on 8 prompts and their answers
    kls = [entry["kl"] for entry in trainer.state.log_history if "kl" in entry]
    assert sum(kls[-10:]) / 10 > sum(kls[:10]) / 10  # it moved away from the reference to get there


def test_a_rollout_cut_at_max_new_tokens_pays_the_missing_eos_penalty(tiny_checkpoint, tmp_path):
    """With no KL, lam 1 and a zero value head, the return at a completion's first token is its score: 0 from the
    reward, minus the penalty where the completion holds no EOS; the logged reward is the reward's, unpenalised."""
    import torch

    from tunelab.train.ppo import PPOSettings

    settings = PPOSettings(max_new_tokens=3, kl_coef=0.0, lam=1.0, missing_eos_penalty=1.5)
    trainer = ppo_trainer(tiny_checkpoint, tmp_path, steps=1, settings=settings,
                          reward=lambda prompts, completions, **_: [0.0] * len(completions))
    eos = trainer.processing_class.eos_token_id
    rollout = trainer.rollout(trainer.model, [trainer.train_dataset[i] for i in range(8)])
    width = rollout.mask.shape[1]
    ended = (rollout.sequences[:, -width:] == eos).any(dim=1)
    assert torch.allclose(rollout.returns[:, 0], -1.5 * (~ended).float())
    assert rollout.stats["reward"] == 0.0 and rollout.stats["ended"] == ended.float().mean().item()
    assert not ended.all()  # a random tiny model rarely says EOS within 3 tokens: the penalty was paid


def test_the_reference_is_the_policy_with_its_adapter_off(tiny_checkpoint, tmp_path):
    from transformers import AutoModelForCausalLM

    from tunelab.train.ppo import disabled_adapter

    trainer = ppo_trainer(tiny_checkpoint, tmp_path, steps=4)
    trainer.train()
    model, base = trainer.model, AutoModelForCausalLM.from_pretrained(str(tiny_checkpoint))
    lora = sum(p.numel() for name, p in model.named_parameters() if "lora_" in name)
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in base.parameters()) + lora
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad(), disabled_adapter(model):
        reference = model(input_ids=ids).logits
    assert torch.allclose(reference, base(input_ids=ids).logits, atol=1e-6)
    assert not torch.allclose(model(input_ids=ids).logits, reference, atol=1e-4)  # the policy itself moved


def test_resume_gives_the_same_policy_and_value_head(tiny_checkpoint, tmp_path):
    whole = ppo_trainer(tiny_checkpoint, tmp_path / "whole", steps=8, save_steps=4)
    whole.train()
    part = ppo_trainer(tiny_checkpoint, tmp_path / "part", steps=8, save_steps=4, callbacks=[StopAt(4)])
    part.train()
    checkpoint = tmp_path / "part" / "ppo" / "checkpoint-4"
    assert (checkpoint / VALUE_HEAD).is_file()
    resumed = ppo_trainer(tiny_checkpoint, tmp_path / "part", steps=8, save_steps=4)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    for (name, first), (_, second) in zip(whole.model.named_parameters(), resumed.model.named_parameters()):
        if first.requires_grad:
            assert torch.equal(first, second), name
    assert torch.equal(whole.value_head.score.weight, resumed.value_head.score.weight)


def test_the_first_rollout_starts_the_value_head_at_its_mean_score(tiny_checkpoint, tmp_path):
    settings = PPOSettings(max_new_tokens=4, missing_eos_penalty=2.0)
    trainer = ppo_trainer(tiny_checkpoint, tmp_path, steps=1, settings=settings)
    rows = [trainer.train_dataset[i] for i in range(8)]
    rollout = trainer.rollout(trainer.model, rows, start_values=True)
    width = rollout.mask.shape[1]
    ended = (rollout.sequences[:, -width:] == trainer.processing_class.eos_token_id).any(dim=1)
    texts = trainer.processing_class.batch_decode(rollout.sequences[:, -width:] * rollout.mask.long(),
                                                  skip_special_tokens=True)
    scores = torch.tensor(letters([], texts)) - 2.0 * (~ended).float()  # the penalty counts: returns hold it
    assert trainer.value_head.score.bias.item() == pytest.approx(scores.mean().item(), abs=1e-5)
    assert rollout.stats["value"] == pytest.approx(scores.mean().item(), abs=1e-5)
    trainer.rollout(trainer.model, rows)  # later rollouts leave the head to the optimizer
    assert trainer.value_head.score.bias.item() == pytest.approx(scores.mean().item(), abs=1e-5)


def test_a_score_that_ignores_the_answer_teaches_nothing(tiny_checkpoint, tmp_path):
    """Every answer scores -4: no answer is better than another, so the policy must not move. A value head
    started at zero would make the early tokens' advantages look better than the last ones' (GAE's lam^distance
    times a negative score), and train the policy anyway."""
    trainer = ppo_trainer(tiny_checkpoint, tmp_path, steps=6, reward=lambda prompts, completions, **_: [-4.0] * 8)
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()
    for name, parameter in trainer.model.named_parameters():
        if parameter.requires_grad:
            assert torch.equal(parameter, before[name]), name
    assert trainer.value_head.score.bias.item() == -4.0
    assert all(entry["kl"] == 0.0 for entry in trainer.state.log_history if "kl" in entry)
