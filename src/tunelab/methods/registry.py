"""The tuning methods tunelab offers: adding one is one module and one line here."""

from __future__ import annotations

from typing import Annotated, Union

from pydantic import Field

from tunelab.errors import TunelabError
from tunelab.methods import adapter, dora, full, ia3, lora, prefix, prompt, qlora
from tunelab.methods.base import Method

METHODS: dict[str, Method] = {
    method.name: method
    for method in (
        lora.METHOD,
        full.METHOD,
        dora.METHOD,
        qlora.METHOD,
        prefix.METHOD,
        prompt.METHOD,
        ia3.METHOD,
        adapter.METHOD,
    )
}


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise TunelabError(f"unknown method '{name}' (available: {', '.join(METHODS)})") from None


# The recipe's `method` section: validated by the schema of the method it names.
MethodSection = Annotated[
    Union[tuple(method.config_class for method in METHODS.values())],  # noqa: UP007 (built from the registry)
    Field(discriminator="name"),
]
