"""Data into tokens: readers, row formats, splits, chat templates and loss masks, generated data sets."""
