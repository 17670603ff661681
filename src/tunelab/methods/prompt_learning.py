"""What prefix and prompt tuning share: trainable virtual tokens in front of every row (peft).

They change the model's inputs, not its weights, so there is nothing to merge, and a row cannot share a packed
padding-free sequence with other rows (each row needs the virtual tokens in front of it).
"""

NO_MERGE_REASON = "it learns virtual tokens put in front of every input, not a change to any weight"
