"""PPO for language models (RLHF as InstructGPT trains it), as small as it can be, on transformers' Trainer.

Why this exists: TRL 1.x removed its PPO trainer (GRPO and RLOO, which need no value model, replaced it), and no
other maintained library trains PPO on a Hugging Face model with the Trainer's checkpoints, resume, callbacks and
distributed engines. So this is the one trainer tunelab writes by hand, and only the part PPO adds:

  rollout   the policy samples completions for a batch of prompts; the rewards score them; the reference model
            (the policy with its adapter disabled: no second copy of the weights) gives each token's log-prob,
            so each token's reward is -kl_coef * (log pi - log pi_ref) and the last one adds the rewards' score;
            a value head on the policy's last hidden state estimates each position's return; GAE (gamma, lam)
            turns rewards and values into advantages (whitened) and returns. The value head's bias starts at
            the first rollout's mean score (ValueHead.start_at), so the first advantages are each answer's
            score against the batch's, not against zero
  update    `ppo_epochs` optimizer steps on each rollout, each the clipped surrogate
            -min(r A, clip(r, 1 - eps, 1 + eps) A) plus value_coef times the clipped value loss
Everything else (optimizer, schedule, accumulation, mixed precision, checkpoints, logging) is the Trainer's.
The value head is saved in each checkpoint as value_head.safetensors, and the rollouts being trained on as
rollouts.pt, and both are restored on --resume: a checkpoint between two rollouts (save_every not a multiple of
ppo_epochs) goes on with the rollout it was saved with, so resume gives the run an uninterrupted one would.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from transformers import Trainer, TrainerCallback

VALUE_HEAD = "value_head.safetensors"
ROLLOUTS = "rollouts.pt"


@dataclass(frozen=True)
class PPOSettings:
    max_new_tokens: int = 16
    temperature: float = 1.0
    kl_coef: float = 0.05  # InstructGPT's beta: the per-token penalty for drifting from the reference
    gamma: float = 1.0
    lam: float = 0.95
    clip_range: float = 0.2
    clip_range_value: float = 0.2
    value_coef: float = 0.1
    ppo_epochs: int = 2  # optimizer steps on each rollout (the prompts of the steps between are not used)
    # Subtracted from the score of a completion cut at max_new_tokens (no EOS), as TRL's old PPOConfig and its
    # OnlineDPOConfig do: a reward model scores what it is shown, so without it a policy whose answers are all cut
    # off never learns that ending is better. None: no penalty.
    missing_eos_penalty: float | None = None


class ValueHead(nn.Module):
    """A scalar per position from the policy's last hidden state. Its weights start at zero and its bias at the
    first rollout's mean score (`start_at`): every position's first estimate is the return an average answer gets."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.score = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.score.weight)
        nn.init.zeros_(self.score.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.score(hidden.float()).squeeze(-1)

    @torch.no_grad()
    def start_at(self, mean_score: float) -> None:
        """Why: a head at zero while the scores average, say, -4 makes every early delta of GAE negative near the
        end of an answer and near zero far from it (lam^distance), so the whitened advantages favour an answer's
        first tokens over its last ones, EOS included, whatever the answer's score: the policy learns to go on
        instead of what the reward prefers, and the large early value loss flows into the shared trunk. The
        head's bias learns at the optimizer's step size (about lr per step), far too slowly to catch up. Starting
        it at the mean score removes that bias from the first update on; the scores themselves are untouched
        (InstructGPT shifts its reward model instead, so that demonstrations score 0 on average: the same
        baseline, where a reward may be any function). Saved with the head, so resume is unaffected."""
        self.score.bias.fill_(mean_score)


@dataclass
class Rollout:
    sequences: torch.Tensor  # prompt + completion ids, left-padded prompts
    attention: torch.Tensor
    mask: torch.Tensor  # 1 on completion tokens that count (up to and including EOS)
    old_logprobs: torch.Tensor  # per completion position
    old_values: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor
    stats: dict[str, float]


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
        lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over completion positions (rows padded with mask 0 after their end)."""
    advantages = torch.zeros_like(rewards)
    running = torch.zeros(rewards.shape[0], device=rewards.device)
    for t in reversed(range(rewards.shape[1])):
        following = values[:, t + 1] * mask[:, t + 1] if t + 1 < rewards.shape[1] else 0.0
        delta = rewards[:, t] + gamma * following - values[:, t]
        running = (delta + gamma * lam * running) * mask[:, t]
        advantages[:, t] = running
    return advantages, advantages + values


def whiten(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mean = (values * mask).sum() / mask.sum()
    variance = (((values - mean) * mask) ** 2).sum() / mask.sum()
    return (values - mean) * torch.rsqrt(variance + 1e-8) * mask


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum() / mask.sum().clamp(min=1)


class PPOTrainer(Trainer):
    """transformers' Trainer whose loss is PPO's on rollouts it samples itself. Rows are dicts with `prompt`
    (text, already in the chat template) and any fields the rewards read; `reward_funcs` take TRL's signature
    (tunelab.rewards.build gives them)."""

    def __init__(self, *args: Any, reward_funcs: list[Callable[..., list[float | None]]], value_head: ValueHead,
                 settings: PPOSettings, **kwargs: Any):
        kwargs.setdefault("data_collator", list)  # rows stay as they are: prompts are tokenized at rollout
        # First, so the value head is in the checkpoint before any later callback (tunelab's commit) runs.
        kwargs["callbacks"] = [PPOCheckpoint(self), *(kwargs.get("callbacks") or [])]
        super().__init__(*args, **kwargs)
        self.reward_funcs, self.value_head, self.settings = reward_funcs, value_head, settings
        self.rollouts: dict[int, Rollout] = {}  # by micro-batch index within a step, reused for ppo_epochs steps
        self.micro = 0

    def create_optimizer(self, model: Any = None) -> Any:
        optimizer = super().create_optimizer(model)
        if not any(p is self.value_head.score.weight for group in optimizer.param_groups for p in group["params"]):
            optimizer.add_param_group({"params": list(self.value_head.parameters()), "weight_decay": 0.0})
        return optimizer

    def train(self, resume_from_checkpoint: str | None = None, **kwargs: Any) -> Any:
        if resume_from_checkpoint:
            from safetensors.torch import load_file

            self.value_head.load_state_dict(load_file(str(Path(resume_from_checkpoint) / VALUE_HEAD)))
            self.rollouts = load_rollouts(rollouts_path(Path(resume_from_checkpoint), self.args.process_index),
                                          self.args.device)
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    def compute_loss(self, model: Any, inputs: list[dict[str, Any]], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        index = self.micro % self.args.gradient_accumulation_steps
        self.micro += 1
        if index == 0:  # a new optimizer step: the Trainer zeroes the model's gradients, not the value head's
            self.value_head.zero_grad(set_to_none=True)
        step = self.state.global_step
        # A new rollout every ppo_epochs steps; a resumed run goes on with the rollouts its checkpoint saved.
        if index not in self.rollouts or (step % self.settings.ppo_epochs == 0 and
                                          self.rollouts[index].stats["step"] != step):
            # a fresh run's first rollout starts the value head (a resumed run is past step 0: its head is loaded)
            self.rollouts[index] = self.rollout(model, inputs, start_values=step == 0 and index == 0)
        rollout = self.rollouts[index]
        if model.training:  # the tokens trained on (prompt and completion), as the Trainer counts input_ids
            self.state.num_input_tokens_seen += int(rollout.attention.sum())
        logprobs, values = self.score_sequences(model, rollout, with_grad=True)
        ratio = torch.exp(logprobs - rollout.old_logprobs)
        clipped = torch.clamp(ratio, 1 - self.settings.clip_range, 1 + self.settings.clip_range)
        policy_loss = masked_mean(-torch.min(ratio * rollout.advantages, clipped * rollout.advantages),
                                  rollout.mask)
        values_clipped = rollout.old_values + torch.clamp(values - rollout.old_values,
                                                          -self.settings.clip_range_value,
                                                          self.settings.clip_range_value)
        value_loss = 0.5 * masked_mean(torch.max((values - rollout.returns) ** 2,
                                                 (values_clipped - rollout.returns) ** 2), rollout.mask)
        if index == 0 and self.model.training:
            self.log_extra = {**{k: v for k, v in rollout.stats.items() if k != "step"},
                              "policy_loss": policy_loss.item(), "value_loss": value_loss.item()}
        return policy_loss + self.settings.value_coef * value_loss

    def training_step(self, model: Any, inputs: Any, num_items_in_batch: Any = None) -> Any:
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self.accelerator.num_processes > 1:  # the value head is outside DDP's model: average its gradients too
            for parameter in self.value_head.parameters():
                if parameter.grad is not None:
                    torch.distributed.all_reduce(parameter.grad)  # a sum: gloo has no AVG
                    parameter.grad /= self.accelerator.num_processes
        return loss

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        if "loss" in logs and getattr(self, "log_extra", None):
            logs = {**logs, **self.log_extra}
        super().log(logs, *args, **kwargs)

    @torch.no_grad()
    def rollout(self, model: Any, rows: list[dict[str, Any]], start_values: bool = False) -> Rollout:
        """Sample answers to `rows`, score them, and turn the scores into advantages and returns. `start_values`:
        first start the value head at these answers' mean score (averaged over processes)."""
        tokenizer = self.processing_class
        side, tokenizer.padding_side = tokenizer.padding_side, "left"  # generation continues every prompt's end
        prompts = tokenizer([prompt_text(row["prompt"], tokenizer) for row in rows], return_tensors="pt", padding=True,
                            add_special_tokens=False).to(self.args.device)
        tokenizer.padding_side = side
        # Sampling and the no-grad scoring run on the model itself: DDP's wrapper has no generate, and its forward
        # is for the passes whose gradients it averages across processes
        model = self.accelerator.unwrap_model(model)
        was_training = model.training
        model.eval()
        sequences = model.generate(**prompts, do_sample=True, temperature=self.settings.temperature, top_k=0,
                                   max_new_tokens=self.settings.max_new_tokens, pad_token_id=tokenizer.pad_token_id)
        model.train(was_training)
        completion = sequences[:, prompts["input_ids"].shape[1]:]
        mask = completion_mask(completion, tokenizer.eos_token_id)
        attention = torch.cat([prompts["attention_mask"], mask.long()], dim=1)
        texts = tokenizer.batch_decode(completion * mask.long() + tokenizer.pad_token_id * (1 - mask.long()),
                                       skip_special_tokens=True)
        rewarded = self.score(rows, texts)
        ended = (completion == tokenizer.eos_token_id).any(dim=1)
        scores = rewarded - (self.settings.missing_eos_penalty or 0.0) * (~ended).float()
        if start_values:
            self.value_head.start_at(self.mean_over_processes(scores))
        partial = Rollout(sequences, attention, mask, *(torch.zeros_like(mask),) * 4, {})
        old_logprobs, old_values = self.score_sequences(model, partial, with_grad=False)
        with disabled_adapter(model):
            reference, _ = self.score_sequences(model, partial, with_grad=False, values=False)
        kl = (old_logprobs - reference) * mask
        rewards = -self.settings.kl_coef * kl
        last = (mask.sum(dim=1).long() - 1).clamp(min=0)
        rewards[torch.arange(len(rows)), last] += scores
        advantages, returns = gae(rewards, old_values * mask, mask, self.settings.gamma, self.settings.lam)
        stats = {"step": self.state.global_step, "reward": rewarded.mean().item(),
                 "kl": (kl.sum(dim=1)).mean().item(), "completion_length": mask.sum(dim=1).mean().item(),
                 "ended": ended.float().mean().item(), "value": masked_mean(old_values, mask).item()}
        return Rollout(sequences, attention, mask, old_logprobs, old_values * mask, whiten(advantages, mask),
                       returns, stats)

    def mean_over_processes(self, values: torch.Tensor) -> float:
        """The mean of `values` over every process's rows (each process samples its own prompts), so that every
        rank starts the same value head."""
        total = torch.stack([values.sum(), torch.tensor(float(values.numel()), device=values.device)])
        if self.accelerator.num_processes > 1:
            torch.distributed.all_reduce(total)
        return (total[0] / total[1]).item()

    def score_sequences(self, model: Any, rollout: Rollout, with_grad: bool,
                        values: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Log-prob of each completion token and the value at the position before it."""
        width = rollout.mask.shape[1]
        with torch.set_grad_enabled(with_grad):
            output = model(input_ids=rollout.sequences, attention_mask=rollout.attention,
                           output_hidden_states=values)
            logits = output.logits[:, -width - 1:-1].float()
            tokens = rollout.sequences[:, -width:]
            logprobs = torch.log_softmax(logits, dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
            estimates = self.value_head(output.hidden_states[-1][:, -width - 1:-1]) if values else None
        return logprobs * rollout.mask, estimates

    def score(self, rows: list[dict[str, Any]], texts: list[str]) -> torch.Tensor:
        """The rewards' sum for each answer, called as TRL calls reward_funcs: a conversational prompt (messages)
        gets conversational completions (one assistant message), a text prompt text."""
        columns = {key: [row.get(key) for row in rows] for key in rows[0] if key != "prompt"}
        conversational = isinstance(rows[0]["prompt"], list)
        completions = [[{"role": "assistant", "content": text}] for text in texts] if conversational else texts
        total = torch.zeros(len(rows), device=self.args.device)
        for function in self.reward_funcs:
            values = function(prompts=[row["prompt"] for row in rows], completions=completions, **columns)
            total += torch.tensor([value or 0.0 for value in values], device=self.args.device)
        return total


def prompt_text(prompt: str | list[dict[str, str]], tokenizer: Any) -> str:
    """A row's prompt as the policy continues it: text as it is, messages in the chat template."""
    if isinstance(prompt, str):
        return prompt
    return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)


def completion_mask(completion: torch.Tensor, eos_id: int) -> torch.Tensor:
    """1 up to and including the first EOS of each row, 0 after it."""
    is_eos = completion == eos_id
    after = (torch.cumsum(is_eos.long(), dim=1) - is_eos.long()) > 0
    return (~after).float()


class disabled_adapter:
    """The reference model: the policy with its PEFT adapter switched off (the base weights it shares)."""

    def __init__(self, model: Any):
        self.context = model.disable_adapter() if hasattr(model, "disable_adapter") else None

    def __enter__(self) -> None:
        if self.context is None:
            raise RuntimeError("PPO's reference is the policy with its adapter disabled: train an adapter method")
        self.context.__enter__()

    def __exit__(self, *exc: Any) -> None:
        self.context.__exit__(*exc)


class PPOCheckpoint(TrainerCallback):
    """Writes the value head and the current rollouts into each checkpoint; runs before tunelab's commit callback,
    so the manifest covers them."""

    def __init__(self, trainer: PPOTrainer):
        self.trainer = trainer

    def on_save(self, args, state, control, **kwargs):
        from safetensors.torch import save_file

        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if not folder.is_dir():
            return
        if state.is_world_process_zero:  # the same on every rank (its gradients are averaged)
            head = self.trainer.value_head.state_dict()
            save_file({k: v.contiguous() for k, v in head.items()}, str(folder / VALUE_HEAD))
        # each process's own rollouts (its own prompts); CheckpointCommit waits for every rank before the manifest
        torch.save({index: vars(rollout) for index, rollout in self.trainer.rollouts.items()},
                   rollouts_path(folder, args.process_index))


def rollouts_path(folder: Path, process: int) -> Path:
    """Process 0 keeps the one-process name, so checkpoints of earlier runs resume as they did."""
    return folder / (ROLLOUTS if process == 0 else f"rollouts-{process}.pt")


def load_rollouts(path: Path, device: Any) -> dict[int, Rollout]:
    """The rollouts a checkpoint saved (tensors and numbers only, so weights_only loading suffices)."""
    if not path.is_file():
        return {}
    saved = torch.load(path, map_location=device, weights_only=True)
    return {index: Rollout(**fields) for index, fields in saved.items()}
