"""tunelab: from raw domain data to a deployed, measurably better fine-tuned language model."""

__version__ = "0.1.0"
