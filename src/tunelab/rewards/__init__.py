"""Rewards for preference and RL tuning, named in a recipe: OpenAI's reinforcement fine-tuning graders (same names
and fields: graders.py, their `{{ item.x }}` / `{{ sample.output_text }}` templates: template.py; `score_model`'s
local models, a reward_model run or a judge that writes text: score_model.py) and Python functions given as
`file.py:function` (functions.py). `reward_funcs` turns each into the callable TRL's trainers
take as `reward_funcs` (prompts, completions and the rows' columns in; one float per completion out), which checks
what it returns: a reward that raises or gives a non-number stops the run with one line naming it and the row.
"""
